"""The client and the `fogdeck` CLI against a live server (no devices: the jobs stay queued)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fogdeck_client import ApiError, FogdeckClient, RolloutOutcome
from models_registry.samples import build_classifier
from tests.factories import DeviceFactory, make_token, make_user
from tests.fogdeck_client.cli_helpers import fogdeck

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]
REQUIREMENTS = {"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512}


@pytest.fixture
def admin_token(db):
    return make_token(make_user("ci-admin", "admin"), name="ci", days=1)


@pytest.fixture
def cli(live_server, admin_token, tmp_path):
    """`fogdeck …` as the admin, through FOGDECK_URL and FOGDECK_TOKEN (no config file)."""
    config = tmp_path / "unused.json"

    def run(*args: str, **env: str):
        return fogdeck(*args, config=config, FOGDECK_URL=live_server.url, FOGDECK_TOKEN=admin_token, **env)

    return run


def test_login_checks_the_token_and_stores_it_for_its_owner_only(live_server, admin_token, tmp_path):
    config = tmp_path / "cfg" / "fogdeck.json"
    refused = fogdeck("login", "--url", live_server.url, "--token", "not-a-token", config=config)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr and not config.exists()
    done = fogdeck("login", "--url", live_server.url, "--token", admin_token, config=config)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": live_server.url, "token": admin_token}
    DeviceFactory(uid="edge-1", tags=["line-a"])
    listed = fogdeck("--json", "devices", config=config)
    assert listed.returncode == 0 and [d["uid"] for d in json.loads(listed.stdout)] == ["edge-1"]
    # the environment wins over the file
    overridden = fogdeck("devices", config=config, FOGDECK_TOKEN="wrong-token")
    assert overridden.returncode == 1 and "HTTP 401" in overridden.stderr


def test_not_logged_in_is_a_usage_error(tmp_path):
    done = fogdeck("devices", config=tmp_path / "none.json")
    assert done.returncode == 2 and "not logged in" in done.stderr


def test_devices_filter_like_the_api(cli):
    DeviceFactory(uid="edge-a", tier="edge", tags=["line-a"])
    DeviceFactory(uid="fog-b", tier="fog", tags=["line-b"])
    done = cli("--json", "devices", "--filter", "tier=fog")
    assert done.returncode == 0, done.stderr
    assert [d["uid"] for d in json.loads(done.stdout)] == ["fog-b"]
    bad = cli("devices", "--filter", "tier")
    assert bad.returncode == 2 and "key=value" in bad.stderr


def test_client_uploads_with_progress_publishes_and_names_the_bad_field(live_server, admin_token, tmp_path, settings):
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    client = FogdeckClient(live_server.url, admin_token)
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(build_classifier() * 3)  # a few chunks of the stream
    seen: list[tuple[int, int]] = []
    version = client.upload_version("defects", artifact, format="onnx", requirements=REQUIREMENTS,
                                    create_model=True, progress=lambda *reading: seen.append(reading))  # fmt: skip
    assert version["status"] == "draft" and version["size"] == artifact.stat().st_size
    assert seen[-1][0] == seen[-1][1] and len(seen) >= 2 and seen == sorted(seen)
    published = client.publish_version(version["model"], version["number"])
    assert published["status"] == "published"
    with pytest.raises(ApiError) as refused:
        client.upload_version("defects", artifact, format="not-a-format")
    assert refused.value.status == 400 and refused.value.request_id
    assert [e["field"] for e in refused.value.errors] == ["format"]
    with pytest.raises(ApiError) as missing:
        client.upload_version("no-such-model", artifact, format="onnx")
    assert missing.value.status == 404


def test_a_viewer_cannot_upload_and_the_cli_says_why(live_server, tmp_path):
    token = make_token(make_user("vic", "viewer"))
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"x")
    done = fogdeck("models", "upload", "defects", str(artifact), "--format", "onnx", "--create",
                   config=tmp_path / "c.json", FOGDECK_URL=live_server.url, FOGDECK_TOKEN=token)  # fmt: skip
    assert done.returncode == 1 and "HTTP 403" in done.stderr and "[request " in done.stderr


def test_preview_start_pause_resume_abort_watch_and_audit_through_the_cli(cli, published_version, tmp_path):
    for n in range(4):
        DeviceFactory(uid=f"line-{n}", tags=["line"])
    model = published_version.model.name
    plan = ["--model", model, "--number", "1", "--target", "tag=line", "--waves", "50,100",
            "--set", 'health_gate={"max_p95_ms": 500}']  # fmt: skip
    preview = cli("rollouts", "preview", *plan)
    assert preview.returncode == 0, preview.stderr
    assert "eligible 4" in preview.stdout and "waves: 2, 2" in preview.stdout
    created = cli("--json", "rollouts", "create", *plan, "--name", "from ci", "--start")
    assert created.returncode == 0, created.stderr
    rollout = json.loads(created.stdout)
    assert rollout["status"] == "running" and rollout["name"] == "from ci"
    rid = str(rollout["id"])

    timed_out = cli("rollouts", "watch", rid, "--interval", "0.2", "--timeout", "0.5")
    assert timed_out.returncode == RolloutOutcome.TIMED_OUT == 6
    assert cli("rollouts", "pause", rid, "--reason", "lunch").returncode == 0
    paused = cli("rollouts", "watch", rid, "--interval", "0.2")
    assert paused.returncode == RolloutOutcome.PAUSED == 5 and "paused" in paused.stdout
    assert cli("rollouts", "resume", rid).returncode == 0
    assert cli("rollouts", "abort", rid, "--reason", "changed our minds").returncode == 0
    aborted = cli("rollouts", "watch", rid, "--interval", "0.2")
    assert aborted.returncode == RolloutOutcome.ABORTED == 3
    assert "aborted" in aborted.stdout and "changed our minds" in aborted.stdout
    again = cli("rollouts", "pause", rid)
    assert again.returncode == 1 and "HTTP 409" in again.stderr

    tail = cli("audit", "tail", "-n", "10", "--filter", "action=rollout.", "--filter", f"object_id={rid}")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert [line.split()[2] for line in lines] == [
        "rollout.create", "rollout.running", "rollout.paused", "rollout.running", "rollout.aborted",
    ]  # fmt: skip
    assert all("user:ci-admin" in line for line in lines)
