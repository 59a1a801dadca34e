"""docker-compose.yml can't run here (no Docker engine), so it is checked by reading it against the code."""

from __future__ import annotations

import base64
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = {name: svc for name, svc in SERVICES.items() if svc.get("image") == "fogdeck:latest"}
SETTINGS_SOURCE = (ROOT / "config" / "settings.py").read_text()


def test_every_backend_and_process_is_there():
    assert {
        "postgres",
        "redis",
        "mosquitto",
        "minio",
        "web",
        "worker",
        "beat",
        "migrate",
        "mqtt-auth",
    } <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_services_run_commands_that_exist(name):
    command = OURS[name]["command"]
    if command[:2] == ["python", "manage.py"]:
        assert command[2] in get_commands(), f"{name}: manage.py {command[2]} does not exist"
    elif command[0] == "celery":
        assert command[1:3] == ["-A", "config"] and command[3] in {"worker", "beat"}
        assert importlib.import_module("config").celery_app.main == "fogdeck"
    elif command[0] == "uvicorn":
        module, attr = command[1].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    else:
        pytest.fail(f"{name}: unknown command {command}")


@pytest.mark.parametrize("name", sorted(OURS))
def test_environment_names_are_ones_the_settings_read(name):
    for variable in OURS[name]["environment"]:
        assert re.search(rf'"{variable}"', SETTINGS_SOURCE), f"{name}: settings never read {variable}"


def test_infrastructure_has_healthchecks_and_dependents_wait_for_them():
    for name in ("postgres", "redis", "minio", "mosquitto", "web"):
        assert "healthcheck" in SERVICES[name], name
    for name in ("web", "worker"):
        depends = SERVICES[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["mosquitto"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_production_settings_are_safe():
    env = OURS["web"]["environment"]
    assert env["DEBUG"] == "false" and env["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert env["AUDIT_HMAC_KEY"].startswith("${AUDIT_HMAC_KEY:?")
    assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
    assert env["MQTT_URL"].startswith("mqtt://") and env["S3_BUCKET"]


def test_mosquitto_files_exist_and_require_authentication():
    mounts = [v.split(":")[0] for v in SERVICES["mosquitto"]["volumes"] if v.startswith("./")]
    for mount in mounts:
        assert (ROOT / mount).is_file(), mount
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    assert "allow_anonymous true" not in conf and "acl_file /mosquitto/auth/acl" in conf
    assert "mqtt-auth:/mosquitto/auth" in SERVICES["mqtt-auth"]["volumes"][0]


def _resolve(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} with test values for the required secrets."""
    secrets = {
        "SECRET_KEY": "compose-check-secret-key-" + "x" * 40,
        "AUDIT_HMAC_KEY": "compose-check-audit-key-" + "y" * 40,
        "POSTGRES_PASSWORD": "pg-password",
        "MQTT_CONTROL_PASSWORD": "mqtt-password",
        "MINIO_ROOT_PASSWORD": "minio-password",
        "SIGNING_KEY": base64.b64encode(bytes(range(32))).decode(),
    }

    def substitute(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3)
        if name in secrets:
            return secrets[name]
        assert operator == ":-", f"${{{name}}} has no default and no test value"
        return rest

    return re.sub(r"\$\{([A-Z0-9_]+)(:[-?])([^}]*)\}", substitute, str(value))


def test_check_deploy_is_clean_with_the_compose_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    env.update({name: _resolve(value) for name, value in OURS["web"]["environment"].items()})
    env["FOGDECK_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


# --- what is published, and how Mosquitto is split (issue 14, finding 3) ---------------------------------
PUBLIC_PORTS = {("mosquitto", 8883)}  # devices, MQTT over TLS: the only port open beyond the host


def _published(service: dict) -> list[tuple[str | None, int, int]]:
    """(host address or None for every interface, host port, container port) of each `ports` entry."""
    published = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str), f"use the short syntax so this test can read it: {entry!r}"
        parts = entry.split(":")
        host_ip = parts[0] if len(parts) == 3 else None
        published.append((host_ip, int(parts[-2]), int(parts[-1])))
    return published


def _listeners(conf: str) -> dict[int, dict[str, str]]:
    """Mosquitto's per-listener settings: the lines after each `listener` up to the next."""
    listeners: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in conf.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            current = listeners.setdefault(int(value.split()[0]), {})
        elif current is not None:
            current[key] = value
    return listeners


MOSQUITTO_CONF = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()


def test_only_the_tls_mqtt_port_is_published_beyond_the_host():
    for name, service in SERVICES.items():
        for host_ip, _host_port, container_port in _published(service):
            if (name, container_port) in PUBLIC_PORTS:
                continue
            assert host_ip == "127.0.0.1", f"{name} publishes {container_port} on every interface"
    assert ("mosquitto", 8883) in {(n, c) for n in SERVICES for _, _, c in _published(SERVICES[n])}
    for name in ("postgres", "redis", "minio-bucket", "worker", "beat", "bridge", "mqtt-auth", "migrate"):
        assert not _published(SERVICES[name]), f"{name} needs no published port"


def test_mosquittos_control_listener_is_never_published_and_devices_get_tls():
    listeners = _listeners(MOSQUITTO_CONF)
    published = {container for _, _, container in _published(SERVICES["mosquitto"])}
    control_port = int(OURS["web"]["environment"]["MQTT_URL"].rsplit(":", 1)[1])
    assert listeners[control_port]["password_file"] == "/mosquitto/auth/passwd-control"
    assert control_port not in published
    tls = listeners[8883]
    assert tls["certfile"].startswith("/mosquitto/certs/") and tls["keyfile"].startswith("/mosquitto/certs/")
    certs = [v for v in SERVICES["mosquitto"]["volumes"] if v.endswith(":/mosquitto/certs:ro")]
    assert len(certs) == 1, "the TLS certificate and key are mounted read-only"
    assert OURS["web"]["environment"]["MQTT_PUBLIC_URL"].startswith("${MQTT_PUBLIC_URL:-mqtts://")


def test_every_listener_devices_reach_forces_client_id_to_username():
    """A device's client id is its uid; the control plane's user is never accepted where devices connect."""
    assert "per_listener_settings true" in MOSQUITTO_CONF.splitlines()
    listeners = _listeners(MOSQUITTO_CONF)
    published = {container for _, _, container in _published(SERVICES["mosquitto"])}
    assert published, "mosquitto publishes no port"
    for port, settings in listeners.items():
        assert settings.get("allow_anonymous") == "false", port
        assert settings.get("acl_file") == "/mosquitto/auth/acl", port
        if settings["password_file"] == "/mosquitto/auth/passwd-control":
            assert port not in published
        else:
            assert settings["password_file"] == "/mosquitto/auth/passwd-devices", port
            assert settings.get("use_username_as_clientid") == "true", port
    assert published <= {port for port, s in listeners.items() if s["password_file"].endswith("passwd-devices")}


def test_the_entrypoint_waits_for_the_files_the_config_reads():
    entrypoint = (ROOT / "deploy/mosquitto/entrypoint.sh").read_text()
    for listener in _listeners(MOSQUITTO_CONF).values():
        for key in ("password_file", "acl_file", "certfile", "keyfile"):
            if key in listener:
                assert Path(listener[key]).name in entrypoint, f"{listener[key]} is not checked before start"
