"""`fogdeck-agent`: run the device agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import threading
from pathlib import Path

import onnxruntime
from pydantic import ValidationError

from agent.device import AgentConfig, DeviceAgent, GatewayConfig
from agent.mqtt_url import parse_mqtt_url
from agent.telemetry import parse_hist_edges
from protocol.messages import DEFAULT_HIST_EDGES, Hardware, Runtime
from protocol.topics import is_valid_device_uid

SECRET_ENV = "FOGDECK_DEVICE_SECRET"  # noqa: S105 (the name of the variable, not a secret)
INFERENCE_TOKEN_ENV = "FOGDECK_INFERENCE_TOKEN"  # noqa: S105 (a variable name)
STATS_TOKEN_ENV = "FOGDECK_GATEWAY_STATS_TOKEN"  # noqa: S105 (a variable name)


def _memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 0


def _hardware(args: argparse.Namespace) -> Hardware:
    detected = {
        "arch": platform.machine() or "unknown",
        "cpu": f"{platform.processor() or platform.machine() or 'cpu'} x{os.cpu_count() or 1}",
        "memory_mb": _memory_mb(),
        "accelerator": "none",
    }
    given = json.loads(args.hardware) if args.hardware else {}
    if not isinstance(given, dict):
        raise ValueError("--hardware must be a JSON object")
    flags = {"arch": args.arch, "cpu": args.cpu, "memory_mb": args.memory_mb, "accelerator": args.accelerator}
    return Hardware.model_validate(detected | given | {k: v for k, v in flags.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fogdeck-agent", description="Fogdeck device agent")
    parser.add_argument("--api", required=True, help="control plane base URL, e.g. https://fogdeck.example")
    parser.add_argument("--mqtt", required=True, help="broker URL, mqtt://host:1883 or mqtts://host:8883")
    parser.add_argument("--device-id", required=True, help="device uid (also the MQTT username and client id)")
    parser.add_argument("--secret", help=f"MQTT secret (default: ${SECRET_ENV}, which keeps it out of `ps`)")
    parser.add_argument("--state-dir", required=True, type=Path, help="where slots and state.json live")
    parser.add_argument("--port", type=int, default=8600, help="local inference API port (default 8600)")
    parser.add_argument("--host", default="127.0.0.1", help="local inference API address (default 127.0.0.1)")
    parser.add_argument("--public-url", help="the inference URL to advertise (default http://<host>:<port>/infer)")
    parser.add_argument(
        "--api-token",
        help=f"require `Authorization: Bearer TOKEN` on POST /infer (default: ${INFERENCE_TOKEN_ENV}; unset: no token)",
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=8.0, help="largest POST /infer body accepted, in MiB (default 8)"
    )
    parser.add_argument("--hardware", help='JSON: {"arch","cpu","memory_mb","accelerator"} (default: detected)')
    parser.add_argument("--arch")
    parser.add_argument("--cpu")
    parser.add_argument("--memory-mb", type=int)
    parser.add_argument("--accelerator")
    parser.add_argument("--telemetry-interval", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument(
        "--hist-edges",
        help="comma-separated bin edges of the input histograms reported for drift detection "
        "(default: the protocol's DEFAULT_HIST_EDGES, in standardized units)",
    )
    parser.add_argument(
        "--dialect", choices=["fogdeck", "aws-iot-jobs"], default="fogdeck",
        help="the jobs API to speak (default fogdeck; aws-iot-jobs: the AWS IoT Jobs MQTT API, docs/protocol.md)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="INFO")
    gateway = parser.add_argument_group("fog gateway artifact cache (see agent/gateway.py)")
    gateway.add_argument("--gateway", action="store_true", help="cache artifacts for the edge devices behind this one")
    gateway.add_argument("--cache-dir", type=Path, help="cache directory (default: STATE_DIR/artifact-cache)")
    gateway.add_argument("--cache-max-mb", type=float, default=1024.0, help="size limit, LRU eviction (default 1024)")
    gateway.add_argument(
        "--cache-host",
        default="127.0.0.1",
        help="cache HTTP address (default 127.0.0.1: only this machine; give the LAN address edge devices use)",
    )
    gateway.add_argument(
        "--stats-token", help=f"bearer token for GET /v1/stats (default: ${STATS_TOKEN_ENV}; unset: /v1/stats refused)"
    )
    gateway.add_argument("--cache-port", type=int, default=8700, help="cache HTTP port (default 8700)")
    gateway.add_argument("--cache-url", help="the URL devices use to reach the cache (default http://HOST:PORT)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    secret = args.secret or os.environ.get(SECRET_ENV)
    if not secret:
        parser.error(f"--secret or ${SECRET_ENV} is required")
    if not is_valid_device_uid(args.device_id):
        parser.error(f"invalid device id {args.device_id!r}")
    if args.public_url and not args.public_url.startswith(("http://", "https://")):
        parser.error("--public-url must be an http:// or https:// URL")
    if not 0 < args.telemetry_interval <= 86400:
        parser.error("--telemetry-interval must be in (0, 86400]")
    if not 0 < args.max_body_mb <= 1024:
        parser.error("--max-body-mb must be in (0, 1024]")
    if args.gateway and not args.cache_max_mb > 0:
        parser.error("--cache-max-mb must be positive")
    if args.cache_url and not args.cache_url.startswith(("http://", "https://")):
        parser.error("--cache-url must be an http(s) URL")
    try:
        parse_mqtt_url(args.mqtt)
        hardware = _hardware(args)
        hist_edges = parse_hist_edges(args.hist_edges) if args.hist_edges else DEFAULT_HIST_EDGES
    except (ValueError, ValidationError) as exc:
        parser.error(str(exc))
    config = AgentConfig(
        api_url=args.api,
        mqtt_url=args.mqtt,
        device_id=args.device_id,
        secret=secret,
        state_dir=args.state_dir,
        http_host=args.host,
        http_port=args.port,
        hardware=hardware,
        runtimes=(Runtime(name="onnxruntime", version=onnxruntime.__version__),),
        telemetry_interval_s=args.telemetry_interval,
        gateway=GatewayConfig(
            cache_dir=args.cache_dir or args.state_dir / "artifact-cache",
            max_bytes=int(args.cache_max_mb * 1024 * 1024),
            host=args.cache_host,
            port=args.cache_port,
            advertise_url=args.cache_url,
            stats_token=args.stats_token or os.environ.get(STATS_TOKEN_ENV) or None,
        )
        if args.gateway
        else None,
        hist_edges=hist_edges,
        public_url=args.public_url,
        http_token=args.api_token or os.environ.get(INFERENCE_TOKEN_ENV) or None,
        http_max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        dialect=args.dialect,
    )
    agent = DeviceAgent(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent.start()
    stop.wait()
    logging.getLogger("fogdeck.agent").info("stopping")
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
