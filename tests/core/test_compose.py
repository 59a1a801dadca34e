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
    assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
    assert env["MQTT_URL"].startswith("mqtt://") and env["S3_BUCKET"]


def test_mosquitto_files_exist_and_require_authentication():
    mounts = [v.split(":")[0] for v in SERVICES["mosquitto"]["volumes"] if v.startswith("./")]
    for mount in mounts:
        assert (ROOT / mount).is_file(), mount
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file /mosquitto/auth/acl" in conf
    assert "mqtt-auth:/mosquitto/auth" in SERVICES["mqtt-auth"]["volumes"][0]


def _resolve(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} with test values for the required secrets."""
    secrets = {
        "SECRET_KEY": "compose-check-secret-key-" + "x" * 40,
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
