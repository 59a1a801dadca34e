"""The `fogdeck` CLI end to end against a live server, simulated devices, the bridge and a Celery worker:
upload, publish, start a rollout, watch it to its end, with the exit code of each outcome. The same run
scrapes /metrics and the bridge's metrics port while a rollout goes on and finds the counters moving.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import pytest
import redis

from agent.simulator import PROFILES as SIM_PROFILES
from audit.actors import Actor
from deployments.models import Job
from fleet.demo_fleet import PROFILES
from fleet.models import Device
from fleet.services import device_create, device_issue_credentials, site_create
from models_registry.samples import build_classifier
from tests.factories import make_token, make_user
from tests.fogdeck_client.cli_helpers import fogdeck, fogdeck_background, scrape, total
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(900)]
ACTOR = Actor.system("tests")
FLEET = 24
REDIS_URL = "redis://127.0.0.1:6379/10"  # a database of our own (the other e2e tests use 11 and 14)
EDGE = ["rpi4", "jetson-nano", "atom-box"]  # all three run the ONNX sample
MODEL = "shape-classifier"
REQUIREMENTS = json.dumps({"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512})


def build_fleet() -> list[dict[str, str]]:
    site = site_create(actor=ACTOR, name="CLI Plant", latitude=45.0, longitude=4.0)
    specs = []
    for index in range(FLEET):
        profile = PROFILES[EDGE[index % len(EDGE)]]
        device = device_create(
            actor=ACTOR, uid=f"cli-{index:03d}", name=f"cli {index}", site=site, tier="edge", arch=profile.arch,
            cpu=profile.cpu, memory_mb=profile.memory_choices[-1], accelerator=profile.accelerator,
            runtimes=[{"name": n, "version": v} for n, v in profile.runtimes], tags=["sim"],
        )  # fmt: skip
        specs.append({"uid": device.uid, "secret": device_issue_credentials(actor=ACTOR, device=device).secret,
                      "profile": profile.name})  # fmt: skip
    return specs


def plan(health_gate: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": {"filter": {"tag": "sim"}},
        "waves": [{"percent": 25}, {"percent": 100}],
        "install_gate": {"min_success_pct": 90, "max_failure_pct": 10, "min_finished": 3},
        "health_gate": health_gate,
        "rate_per_minute": 3000,
        "job_timeout_seconds": 60,
        "seed": 3,
    }


def test_cli_uploads_publishes_rolls_out_and_exits_by_outcome_while_metrics_move(
    live_server, mosquitto, processes, tmp_path, settings
):
    settings.PUBLIC_BASE_URL = live_server.url
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    redis.Redis.from_url(REDIS_URL).flushdb()
    (tmp_path / "devices.json").write_text(json.dumps(build_fleet()))
    mosquitto.sync_auth()
    # v2 computes what v1 does, 4x slower on every profile of the fleet: its canary's health gate fails
    (tmp_path / "profiles.json").write_text(json.dumps(
        {name: {"versions": {f"{MODEL}@2": 4 * SIM_PROFILES[name].speed_factor}} for name in EDGE}
    ))  # fmt: skip
    bridge_port, worker_port = free_port(), free_port()
    (tmp_path / "worker-metrics").mkdir()
    bridge = processes("bridge", "manage.py", "mqtt_bridge", "--client-id", "fogdeck-cli-bridge",
                       "--metrics-port", str(bridge_port), MQTT_URL=mosquitto.url, PUBLIC_BASE_URL=live_server.url,
                       REDIS_URL="")  # fmt: skip
    worker = processes(
        "worker", "-m", "celery", "-A", "config", "worker", "--beat", "--concurrency", "2", "--loglevel", "INFO",
        "-s", str(tmp_path / "beat-schedule"), "-n", "cli-worker@%h",
        REDIS_URL=REDIS_URL, PUBLIC_BASE_URL=live_server.url, ROLLOUT_TICK_SECONDS="1",
        WORKER_METRICS_PORT=str(worker_port), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "worker-metrics"),
    )  # fmt: skip
    processes(
        "sim", "-m", "agent.simulator", "--api", live_server.url, "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}",
        "--devices", str(FLEET), "--devices-file", str(tmp_path / "devices.json"), "--duration", "800",
        "--telemetry-interval", "2", "--rps", "10", "--seed", "5", "--profile-file", str(tmp_path / "profiles.json"),
    )  # fmt: skip
    wait_until(lambda: Device.objects.online().count() == FLEET, 180,
               lambda: f"{Device.objects.online().count()} online\n{bridge.output()[-2000:]}", interval=1)  # fmt: skip

    def logs() -> str:
        return f"--- worker\n{worker.output()[-3000:]}\n--- bridge\n{bridge.output()[-2000:]}"

    # login: the token is checked, then kept in a file only its owner reads
    token = make_token(make_user("ci", "admin"), name="ci", days=1)
    config = tmp_path / "home" / "fogdeck.json"
    login = fogdeck("login", "--url", live_server.url, "--token", token, config=config)
    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600

    def upload(number: int, artifact: bytes) -> None:
        path = tmp_path / f"v{number}.onnx"
        path.write_bytes(artifact)
        done = fogdeck("models", "upload", MODEL, str(path), "--format", "onnx", "--requirements", REQUIREMENTS,
                       "--create", "--publish", config=config)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"{MODEL} v{number} published" in done.stdout
        assert "uploading" in done.stderr and "100.0%" in done.stderr  # the progress, one line a quarter in a log

    def rollout(number: int, health_gate: dict[str, Any], name: str) -> tuple[int, str, int]:
        plan_file = tmp_path / f"plan-{number}.json"
        plan_file.write_text(json.dumps(plan(health_gate)))
        log = tmp_path / f"watch-{number}.log"
        watch = fogdeck_background("rollouts", "create", "--model", MODEL, "--number", str(number), "--plan",
                                   str(plan_file), "--name", name, "--start", "--watch", "--interval", "0.5",
                                   "--timeout", "400", config=config, log=log)  # fmt: skip
        try:
            code = watch.wait(460)
        finally:
            if watch.poll() is None:
                watch.kill()
        output = log.read_text()
        return code, output, int(output.split("rollout ", 1)[1].split()[0])

    # 1. v1 everywhere; while it runs, /metrics (web) and the bridge's port show the work moving
    upload(1, build_classifier())
    web_before, bridge_before = scrape(f"{live_server.url}/metrics", token), scrape(f"http://127.0.0.1:{bridge_port}/")
    assert total(web_before, "fogdeck_jobs", 'status="SUCCEEDED"') == 0
    plan_file = tmp_path / "plan-1.json"
    plan_file.write_text(json.dumps(plan({"max_p95_ms": 500, "bake_seconds": 3, "min_samples": 30})))
    log = tmp_path / "watch-1.log"
    watch = fogdeck_background("rollouts", "create", "--model", MODEL, "--number", "1", "--plan", str(plan_file),
                               "--start", "--watch", "--interval", "0.5", "--timeout", "400",
                               config=config, log=log)  # fmt: skip
    wait_until(lambda: Job.objects.exists(), 60, lambda: f"a job of the first rollout\n{log.read_text()}\n{logs()}")

    def moving() -> bool:
        web, bridged = scrape(f"{live_server.url}/metrics", token), scrape(f"http://127.0.0.1:{bridge_port}/")
        return (
            total(web, "fogdeck_jobs", 'status="SUCCEEDED"') > 0
            and total(web, "fogdeck_http_requests_total", 'view="rollout-detail"') > 0  # the CLI's watch
            and total(bridged, "fogdeck_bridge_messages_applied_total", 'kind="job_update"')
            > total(bridge_before, "fogdeck_bridge_messages_applied_total", 'kind="job_update"')
            and total(bridged, "fogdeck_bridge_outbox_published_total")
            > total(bridge_before, "fogdeck_bridge_outbox_published_total")
            and total(bridged, "fogdeck_bridge_batch_seconds_count", 'kind="telemetry"') > 0
        )

    def readings() -> str:
        web, bridged = scrape(f"{live_server.url}/metrics", token), scrape(f"http://127.0.0.1:{bridge_port}/")
        shown = [f"{k} {v}" for k, v in {**web, **bridged}.items() if k.startswith(("fogdeck_jobs", "fogdeck_bridge_m",
                 "fogdeck_bridge_o", "fogdeck_rollouts", 'fogdeck_http_requests_total{method="GET"'))]  # fmt: skip
        return "\n".join(shown) + f"\n--- watch\n{log.read_text()[-2000:]}"

    wait_until(moving, 120, lambda: f"the counters to move\n{readings()}\n{logs()}", interval=0.5)
    during = scrape(f"{live_server.url}/metrics", token)
    assert "fogdeck_outbox_pending" in during and 'fogdeck_rollouts{status="running"}' in during
    code = watch.wait(460)
    output = log.read_text()
    assert code == 0, f"{output}\n{logs()}"
    assert "completed" in output.splitlines()[-1] and "w1 passed" in output
    after = scrape(f"{live_server.url}/metrics", token)
    assert total(after, "fogdeck_gate_evaluations_total", 'verdict="pass"') > 0
    assert total(after, "fogdeck_jobs", 'kind="install"', 'status="SUCCEEDED"') == FLEET
    # the worker's own port: its pool children's task and gate counts, summed over PROMETHEUS_MULTIPROC_DIR
    worked = scrape(f"http://127.0.0.1:{worker_port}/")
    assert (
        total(worked, "fogdeck_celery_tasks_total", 'task="deployments.tasks.rollouts_tick"', 'outcome="success"') > 0
    )
    assert total(worked, "fogdeck_gate_verdicts_total", 'gate="install"', 'verdict="pass"', 'final="true"') == 2

    # 2. v2 is 4x slower: the canary's health gate fails, the rollout rolls back: exit 4
    upload(2, build_classifier(name="fogdeck-sample-classifier-next"))
    code, output, rollout_id = rollout(
        2, {"max_p95_latency_ratio": 1.3, "bake_seconds": 4, "min_samples": 40}, "slow one"
    )
    assert code == 4, f"{output}\n{logs()}"
    assert "rolled_back" in output.splitlines()[-1] and "health gate failed" in output

    # 3. v3 does not load on any device: the install gate fails, the rollout aborts: exit 3
    upload(3, b"not an onnx model " * 64)
    code, output, _ = rollout(3, {"max_p95_ms": 500, "bake_seconds": 3, "min_samples": 30}, "broken one")
    assert code == 3, f"{output}\n{logs()}"
    assert "aborted" in output.splitlines()[-1] and "install gate failed" in output

    # the CLI's actions are in the audit log under the token's user, and `audit tail` shows them
    tail = fogdeck("audit", "tail", "-n", "50", "--filter", "actor=ci", "--filter", "action=rollout.", config=config)
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.count("rollout.create") == 3 and "user:ci" in tail.stdout
    assert f"rollout:{rollout_id}" in tail.stdout
