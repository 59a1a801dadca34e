"""Prometheus metrics (prometheus-client): what each process counts, and the registry a scrape reads.

Where each metric lives (docs/operations.md, "Metrics"):
- the web app counts requests and open websockets, and `/metrics` adds the fleet's state read from the
  database at scrape time (jobs and rollouts by state, outbox depth and age, gate verdicts);
- the MQTT bridge counts the messages it applies and rejects and times its batches, served on its own port
  (`mqtt_bridge --metrics-port`);
- a Celery worker counts its tasks and the gate verdicts it records, served on `WORKER_METRICS_PORT`.
With several processes behind one port (uvicorn --workers, Celery's prefork pool) set
PROMETHEUS_MULTIPROC_DIR to an empty directory per host: prometheus-client then keeps each process's
values in files there and a scrape sums them.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "serve_process_metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- web app -------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "fogdeck_http_requests_total", "HTTP requests answered, by route name and status code", ["method", "view", "status"]
)
HTTP_LATENCY = Histogram(
    "fogdeck_http_request_duration_seconds", "time to answer an HTTP request", ["method", "view"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
WEBSOCKETS = Gauge(
    "fogdeck_websocket_groups", "open websocket memberships by group kind (fleet, device, rollout)", ["kind"],
    multiprocess_mode="livesum",
)  # fmt: skip
SCRAPE_SECONDS = Histogram("fogdeck_metrics_scrape_seconds", "time to render /metrics", buckets=LATENCY_BUCKETS)

# --- MQTT bridge ---------------------------------------------------------------------------------
BRIDGE_APPLIED = Counter(
    "fogdeck_bridge_messages_applied_total", "device messages applied, by kind (telemetry, job_update, …)", ["kind"]
)
BRIDGE_REJECTED = Counter(
    "fogdeck_bridge_messages_rejected_total", "device messages dropped, by reason (docs/protocol.md)", ["reason"]
)
BRIDGE_BATCH = Histogram(
    "fogdeck_bridge_batch_seconds", "time to apply one batch (telemetry, device messages, outbox pass)", ["kind"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
BRIDGE_OUTBOX_PUBLISHED = Counter("fogdeck_bridge_outbox_published_total", "outbox messages the broker acknowledged")

# --- Celery worker -------------------------------------------------------------------------------
TASKS = Counter("fogdeck_celery_tasks_total", "Celery tasks finished, by task and outcome", ["task", "outcome"])
GATE_VERDICTS = Counter(
    "fogdeck_gate_verdicts_total", "gate evaluations recorded by this process", ["gate", "verdict", "final"]
)


def websocket_kind(group: str) -> str:
    return group.split(".", 1)[0]


def _process_registry() -> CollectorRegistry:
    """This process's metrics, or every process's from PROMETHEUS_MULTIPROC_DIR when it is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition(*, state: Collector | None = None) -> bytes:
    """The text a scrape of /metrics gets: this process's metrics, then what `state` reads at scrape time
    (the fleet's jobs and outbox, `stack/fleet_metrics.py`: core can't read the apps above it)."""
    started = time.perf_counter()
    output = generate_latest(_process_registry())
    if state is not None:
        fleet = CollectorRegistry(auto_describe=False)
        fleet.register(state)
        output += generate_latest(fleet)
    SCRAPE_SECONDS.observe(time.perf_counter() - started)
    return output


def serve_process_metrics(port: int, address: str) -> None:
    """Serve this process's metrics on http://address:port/ (the bridge, the worker): a thread, no auth.
    Bind it to a private address (METRICS_BIND, 127.0.0.1 by default) that only Prometheus reaches."""
    start_http_server(port, addr=address, registry=_process_registry())
