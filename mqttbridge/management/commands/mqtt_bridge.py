from __future__ import annotations

import gc
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.metrics import serve_process_metrics
from deployments import bridge_handlers
from mqttbridge.runtime import Bridge


class Command(BaseCommand):
    help = "Run the MQTT bridge: apply device status, state, job updates and telemetry; publish the outbox."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--client-id", default="fogdeck-bridge", help="one id per bridge process, in the fogdeck- namespace"
        )
        parser.add_argument(
            "--telemetry-flush-ms",
            type=int,
            default=200,
            help="longest a telemetry message waits for its batch under continuous traffic (default 200)",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=settings.BRIDGE_METRICS_PORT,
            help="serve this bridge's Prometheus metrics on METRICS_BIND:PORT (default BRIDGE_METRICS_PORT; 0: off)",
        )

    def handle(self, *args: Any, client_id: str, telemetry_flush_ms: int, metrics_port: int, **options: Any) -> None:
        if telemetry_flush_ms < 10:
            raise CommandError("--telemetry-flush-ms must be at least 10")
        try:
            bridge = Bridge(
                client_id=client_id,
                telemetry_flush_seconds=telemetry_flush_ms / 1000,
                **bridge_handlers.HANDLERS,
            )
        except ValueError as exc:
            raise CommandError(f"--client-id: {exc}") from exc
        # What is loaded by now (Django, the models, the protocol's schemas) lives as long as the process;
        # frozen, full cyclic collections no longer walk it (as config/asgi.py does for the web process).
        gc.freeze()
        if metrics_port:
            serve_process_metrics(metrics_port, settings.METRICS_BIND)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: bridge.stop())
        verbose = options.get("verbosity", 1) > 0  # the demo runs it with -v 0: its console has its own lines
        if verbose:
            self.stdout.write(f"MQTT bridge {client_id} starting")
        bridge.run()
        if verbose:
            self.stdout.write(
                f"MQTT bridge stopped: applied {dict(bridge.stats.applied)}, rejected {dict(bridge.stats.rejected)}"
            )
