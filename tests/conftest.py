from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import pytest_asyncio
from rest_framework.test import APIClient

from audit.actors import Actor
from audit.models import AuditEntry
from telemetry.streaming import coalescer_close
from tests.factories import make_token, make_user
from tests.leaks import Snapshot, kill_children_since, leaked_since
from tests.processes import Mosquitto, Process, mosquitto_fixture, processes_fixture

LEAK_GRACE_SECONDS = 3.0


@pytest.fixture(autouse=True)
def _no_leftover_threads_or_processes() -> Any:
    """Fail a test that leaves a thread (non-daemon, or running our code) or a child process running after
    it ended (fixtures included), after a short grace period: it would go on acting on later tests."""
    before = Snapshot.take()
    yield
    coalescer_close()  # the process's telemetry stream thread: started by whichever test offered first
    leaked = leaked_since(before, LEAK_GRACE_SECONDS)
    if leaked:
        kill_children_since(before)
        pytest.fail("left running after the test:\n  " + "\n  ".join(leaked), pytrace=False)


@pytest_asyncio.fixture
async def web_server_layer() -> Any:
    """This test process plays the web server for its websocket consumers. On the embedded default
    (in-memory layer with the relay) that means what `manage.py serve` does at start: `relay_serve`, so
    group messages sent from other threads (on-commit broadcasts, the stream coalescer) reach the
    consumers' loop. Redis needs nothing."""
    from core.channels_relay import relay_close, relay_serve, relay_socket_path

    if relay_socket_path() is None:
        yield
        return
    directory = tempfile.mkdtemp(prefix="fd-ws-")  # short: a UNIX socket path has ~100 characters
    server = await relay_serve(f"{directory}/relay.sock")
    try:
        yield
    finally:
        await relay_close(server)
        shutil.rmtree(directory, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On any database but PostgreSQL, deselect (not skip) the tests marked `postgres_only(reason=...)`:
    they check PostgreSQL itself (a plan, an index), not something a user of the embedded default meets."""
    from django.conf import settings

    for item in items:
        marker = item.get_closest_marker("postgres_only")
        if marker is not None and not marker.kwargs.get("reason"):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.postgres_only needs reason=...")
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        return
    deselected = [item for item in items if item.get_closest_marker("postgres_only")]
    if not deselected:
        return
    config.hook.pytest_deselected(items=deselected)
    items[:] = [item for item in items if not item.get_closest_marker("postgres_only")]
    reasons = Counter(item.get_closest_marker("postgres_only").kwargs["reason"] for item in deselected)  # type: ignore[union-attr]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"deselected {len(deselected)} PostgreSQL-only tests (database is not PostgreSQL):")
        for reason, count in reasons.most_common():
            reporter.write_line(f"  {count} x {reason}")


def _client_for(role: str | None, username: str) -> APIClient:
    user = make_user(username, role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(user)}")
    client.user = user  # type: ignore[attr-defined]
    return client


@pytest.fixture(autouse=True)
def _isolated_security_state(settings: Any, tmp_path_factory: Any) -> Any:
    """Each test gets its own throttle and lockout counters and its own audit checkpoint, and rates high
    enough that the suite never meets them (tests/core/test_throttling.py lowers them to prove they work).

    The counters and the checkpoint live outside the database (the cache, Redis, a file), so the rollback
    that isolates tests' rows would not reset them."""
    import uuid

    tag = uuid.uuid4().hex[:12]
    settings.SECURITY_CACHE_PREFIX = f"test-sec-{tag}"
    settings.API_THROTTLE_RATES = {"anon": "100000/min", "user": "100000/min", "auth": "100000/min"}
    settings.AUDIT_CHECKPOINT_FILE = tmp_path_factory.mktemp("audit") / "audit-checkpoint.json"
    settings.AUDIT_CHECKPOINT_REDIS_KEY = f"test:audit:checkpoint:{tag}"
    yield
    if settings.REDIS_URL:
        from audit import checkpoint

        checkpoint._redis(settings.REDIS_URL).delete(settings.AUDIT_CHECKPOINT_REDIS_KEY)


@pytest.fixture
def admin_client(db: Any) -> APIClient:
    return _client_for("admin", "alice-admin")


@pytest.fixture
def operator_client(db: Any) -> APIClient:
    return _client_for("operator", "oscar-operator")


@pytest.fixture
def viewer_client(db: Any) -> APIClient:
    return _client_for("viewer", "vera-viewer")


@pytest.fixture
def anon_client(db: Any) -> APIClient:
    return APIClient()


@pytest.fixture
def assert_audited() -> Callable[..., AuditEntry]:
    """Assert the newest entry for an object has this action (and, optionally, this actor)."""

    def check(object_type: str, object_id: object, action: str, actor: str | None = None) -> AuditEntry:
        entry = AuditEntry.objects.for_object(object_type, object_id).filter(action=action).order_by("-id").first()
        assert entry is not None, f"no audit entry {action} for {object_type}:{object_id}"
        if actor is not None:
            assert entry.actor == actor
        return entry

    return check


@pytest.fixture
def mosquitto(tmp_path: Any) -> Any:
    """A Mosquitto of our own on a free port, enforcing generated per-device password and ACL files."""
    yield from mosquitto_fixture(tmp_path)


@pytest.fixture
def processes(tmp_path: Any) -> Any:
    """Start project processes (`processes("bridge", "manage.py", "mqtt_bridge", MQTT_URL=…)`); stopped after."""
    yield from processes_fixture(tmp_path)


__all__ = ["Mosquitto", "Process"]


@pytest.fixture
def published_version(db: Any, settings: Any, tmp_path: Any) -> Any:
    """The sample classifier's first version, uploaded and published (signed with a throwaway key)."""
    import io

    from models_registry.samples import sample_versions
    from models_registry.services import model_create, model_version_create, model_version_publish

    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    actor = Actor.system("tests")
    sample = sample_versions()[0]
    model = model_create(actor=actor, name="shape-classifier", task="classification")
    version = model_version_create(
        actor=actor,
        model=model,
        artifact=io.BytesIO(sample.onnx_bytes),
        format="onnx",
        framework="other",
        requirements={"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512},
    )
    return model_version_publish(actor=actor, version=version)
