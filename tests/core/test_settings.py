"""Settings come from the environment and refuse unsafe production combinations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLEAN = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "SYSTEMROOT"}}


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import json, config.settings as s; "
        "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], 'layer': s.CHANNEL_LAYERS['default']['BACKEND'],"
        " 'broker': s.CELERY_BROKER_URL, 'storage': s.STORAGES['default']['BACKEND'],"
        " 'mqtt': [s.MQTT_HOST, s.MQTT_PORT],"
        " 'embedded_mqtt': s.EMBEDDED_MQTT}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**CLEAN, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_variables_give_the_embedded_default(tmp_path):
    result = load_settings(DEBUG="true", FOGDECK_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '"db": "django.db.backends.sqlite3"' in result.stdout
    assert "InMemoryChannelLayer" in result.stdout and '"broker": "filesystem://localhost/"' in result.stdout
    assert "FileSystemStorage" in result.stdout and '"embedded_mqtt": true' in result.stdout


def test_service_urls_switch_on_the_real_backends(tmp_path):
    result = load_settings(
        DEBUG="true",
        FOGDECK_DATA_DIR=str(tmp_path),
        DATABASE_URL="postgres://postgres@db.internal:5432/fogdeck",
        REDIS_URL="redis://cache:6379/0",
        MQTT_URL="mqtt://fogdeck:pw@mosquitto:1883",
        S3_ENDPOINT_URL="http://minio:9000",
        S3_BUCKET="artifacts",
    )
    assert result.returncode == 0, result.stderr
    assert '"db": "django.db.backends.postgresql"' in result.stdout
    assert "RedisChannelLayer" in result.stdout and '"broker": "redis://cache:6379/0"' in result.stdout
    assert "S3Storage" in result.stdout and '"mqtt": ["mosquitto", 1883]' in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "false", "ALLOWED_HOSTS": "x"}, "SECRET_KEY is not set"),
        # the key that used to be built in is public: refused even for development
        ({"DEBUG": "true", "SECRET_KEY": "fogdeck-insecure-development-key-change-me"}, "old built-in development key"),
        ({"DEBUG": "false", "SECRET_KEY": "short"}, "at least 32 characters"),
        ({"DEBUG": "false", "SECRET_KEY": "k" * 40}, "set ALLOWED_HOSTS"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "true", "EMBEDDED_MQTT_PORT": "abc"}, "EMBEDDED_MQTT_PORT='abc' is not an integer"),
        ({"DEBUG": "true", "MQTT_URL": "http://broker"}, "MQTT_URL scheme"),
        ({"DEBUG": "true", "S3_ENDPOINT_URL": "http://minio:9000"}, "S3_BUCKET is not"),
    ],
)
def test_unsafe_or_malformed_settings_refuse_to_start(tmp_path, env, message):
    result = load_settings(FOGDECK_DATA_DIR=str(tmp_path), **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_secret_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 50 + "\n")
    code = "import config.settings as s; print(s.SECRET_KEY == 's' * 50)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **CLEAN,
            "DEBUG": "false",
            "SECRET_KEY_FILE": str(secret_file),
            "ALLOWED_HOSTS": "x",
            "FOGDECK_DATA_DIR": str(tmp_path),
        },
    )
    assert result.stdout.strip() == "True", result.stderr


def database_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    code = "import json, config.settings as s; print(json.dumps(s.DATABASES['default'], default=str))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**CLEAN, "DEBUG": "true", "FOGDECK_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_pool_puts_a_psycopg_pool_in_the_database_options(tmp_path):
    import json

    result = database_settings(
        tmp_path, DATABASE_URL="postgres://postgres@db.internal:5432/fogdeck", DB_POOL="true", DB_POOL_MAX_SIZE="6"
    )
    assert result.returncode == 0, result.stderr
    database = json.loads(result.stdout)
    assert database["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 6, "timeout": 10.0}
    assert database["CONN_MAX_AGE"] == 0  # Django refuses persistent connections with a pool


def test_without_db_pool_connections_are_per_request_and_unpooled(tmp_path):
    import json

    result = database_settings(tmp_path, DATABASE_URL="postgres://postgres@db.internal:5432/fogdeck")
    assert result.returncode == 0, result.stderr
    database = json.loads(result.stdout)
    assert "pool" not in database.get("OPTIONS", {}) and database["CONN_MAX_AGE"] == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "postgres://p@db:5432/f", "DB_POOL": "true", "DB_CONN_MAX_AGE": "60"}, "DB_CONN_MAX_AGE=60"),
        ({"DB_POOL": "true"}, "needs a PostgreSQL DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:////tmp/x.sqlite3", "DB_POOL": "true"}, "needs a PostgreSQL DATABASE_URL"),
        ({"DATABASE_URL": "postgres://p@db:5432/f", "DB_POOL": "true", "DB_POOL_MIN_SIZE": "5",
          "DB_POOL_MAX_SIZE": "2"}, "above DB_POOL_MAX_SIZE"),
        ({"DATABASE_URL": "postgres://p@db:5432/f", "DB_POOL_MAX_SIZE": "0"}, "must be at least 1"),
    ],
)  # fmt: skip
def test_pool_settings_that_cannot_work_refuse_to_start(tmp_path, env, message):
    result = database_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def development_secrets(data_dir: Path) -> dict[str, object]:
    """Settings of a DEBUG install with no SECRET_KEY, loaded in a fresh interpreter."""
    import json

    code = (
        "import json, os, stat, config.settings as s; "
        "print(json.dumps({'key': s.SECRET_KEY, 'mqtt': s.MQTT_PASSWORD, 'links': s.ARTIFACT_LINK_KEY, "
        "'audit': s.AUDIT_HMAC_KEY, 'mode': stat.S_IMODE(os.stat(s.DEV_SECRET_KEY_FILE).st_mode)}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**CLEAN, "DEBUG": "true", "FOGDECK_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_each_development_install_makes_its_own_private_key(tmp_path):
    first, second = development_secrets(tmp_path / "a"), development_secrets(tmp_path / "b")
    assert first["key"] != second["key"] and len(str(first["key"])) >= 50
    assert first["key"] != "fogdeck-insecure-development-key-change-me"
    assert first["mode"] == 0o600
    # every secret derived from it differs between installs too, and from each other
    for name in ("mqtt", "links", "audit"):
        assert first[name] != second[name]
    assert len({first["mqtt"], first["links"], first["audit"], first["key"]}) == 4
    # the same install keeps its key across restarts (sessions, links and the broker password survive)
    assert development_secrets(tmp_path / "a") == first


def test_a_link_signed_with_the_old_public_key_is_refused(tmp_path):
    """With DEBUG on and no SECRET_KEY, a 10-year download link forged with the key that used to be in the
    source answers 403 (it was served before), and the MQTT password derived from it no longer matches."""
    code = """
import hashlib, json, time, django
django.setup()
from django.conf import settings
from django.core.signing import Signer
from django.test import Client
from models_registry.services import DOWNLOAD_SALT
public = "fogdeck-insecure-development-key-change-me"
forged = Signer(key=public, salt=DOWNLOAD_SALT).sign_object(
    {"k": "artifacts/x.onnx", "v": 1, "e": int((time.time() + 10 * 365 * 86400) * 1000)})
response = Client().get(f"/api/v1/artifacts/{forged}/")
old_mqtt = hashlib.sha256(f"fogdeck-mqtt:{public}".encode()).hexdigest()
print(json.dumps({"status": response.status_code, "body": response.content.decode(),
                  "mqtt_forgeable": settings.MQTT_PASSWORD == old_mqtt}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            **CLEAN,
            "DEBUG": "true",
            "FOGDECK_DATA_DIR": str(tmp_path),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "ALLOWED_HOSTS": "testserver",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    import json

    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == 403 and "invalid download link" in outcome["body"]
    assert outcome["mqtt_forgeable"] is False
