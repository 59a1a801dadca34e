"""`fogdeck`: the command line for CI and operators, built on FogdeckClient (docs in the README, "The CLI").

Exit codes: 0 success (a watched rollout completed), 1 an API or connection error, 2 bad usage,
3 the rollout was aborted (failed), 4 rolled back, 5 paused (waits for a person), 6 the watch timed out.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .client import FogdeckClient
from .config import ClientConfig, config_path, load_config, save_config
from .progress import ProgressLine, rollout_summary, upload_progress
from .transport import ApiError, TransportError

EXIT_ERROR = 1
EXIT_USAGE = 2
ROLLOUT_VERBS = ("start", "pause", "resume", "abort", "rollback", "approve")


class UsageError(Exception):
    pass


def _pairs(values: Sequence[str] | None, option: str) -> dict[str, Any]:
    """`key=value` options; a key given twice becomes a list (tag=a tag=b)."""
    result: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option}: expected key=value, got {item!r}")
        if key in result:
            previous = result[key]
            result[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            result[key] = value
    return result


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _show(args: argparse.Namespace, data: Any, text: str) -> None:
    """The API's JSON with --json, else one line for people."""
    if args.json:
        _print_json(data)
    else:
        print(text)


def _client(args: argparse.Namespace) -> FogdeckClient:
    config = load_config()
    if config is None:
        raise UsageError(f"not logged in: run `fogdeck login` or set FOGDECK_URL and FOGDECK_TOKEN ({config_path()})")
    return FogdeckClient(config.url, config.token, timeout=args.http_timeout)


# --- commands --------------------------------------------------------------------------------------
def cmd_login(args: argparse.Namespace) -> int:
    token = args.token or (sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("API token: "))
    if not token:
        raise UsageError("--token: a token is required (manage.py token_create USER --name N --days D)")
    FogdeckClient(args.url, token, timeout=args.http_timeout).whoami_check()
    path = save_config(ClientConfig(url=args.url.rstrip("/"), token=token))
    print(f"logged in to {args.url}; token stored in {path} (mode 0600)")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    devices = _client(args).devices(limit=args.limit, **_pairs(args.filter, "--filter"))
    if args.json:
        _print_json(devices)
        return 0
    for device in devices:
        print(f"{device['id']:>7}  {device['uid']:<24} {device.get('tier', ''):<6} {device.get('status', ''):<8} "
              f"{','.join(device.get('tags') or [])}")  # fmt: skip
    print(f"{len(devices)} device(s)", file=sys.stderr)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    client = _client(args)
    artifact = Path(args.file)
    if not artifact.is_file():
        raise UsageError(f"FILE: {artifact} is not a file")
    requirements = json.loads(args.requirements) if args.requirements else None
    line = ProgressLine()
    version = client.upload_version(
        args.model, artifact, format=args.format, framework=args.framework, requirements=requirements,
        label=args.label, create_model=args.create, task=args.task,
        progress=None if args.quiet else upload_progress(line, artifact.name),
    )  # fmt: skip
    line.done()
    if args.publish:
        version = client.publish_version(version["model"], version["number"])
    if args.json:
        _print_json(version)
    else:
        print(f"{version['model_name']} v{version['number']} {version['status']} (id {version['id']}, "
              f"sha256 {version['sha256'][:12]}…)")  # fmt: skip
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    client = _client(args)
    version = client.version(args.model, args.number)
    version = client.publish_version(version["model"], version["number"])
    _show(args, version, f"{version['model_name']} v{version['number']} {version['status']}")
    return 0


def _plan(args: argparse.Namespace, client: FogdeckClient) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(Path(args.plan).read_text()) if args.plan else {}
    if args.version_id:
        plan["version"] = args.version_id
    elif args.model:
        if args.number is None:
            raise UsageError("--number: required with --model")
        plan["version"] = client.version(args.model, args.number)["id"]
    if "version" not in plan and "pipeline_version" not in plan:
        raise UsageError("--model/--number or --version-id (or a plan file with a version) is required")
    if target := _pairs(args.target, "--target"):
        plan.setdefault("target", {}).setdefault("filter", {}).update(target)
    if args.waves:
        try:
            plan["waves"] = [{"percent": float(p)} for p in args.waves.split(",")]
        except ValueError:
            raise UsageError(f"--waves: cumulative percents such as 5,30,100, got {args.waves!r}") from None
    if args.name:
        plan["name"] = args.name
    for key, value in _pairs(args.set, "--set").items():
        try:
            plan[key] = json.loads(value)
        except ValueError:
            plan[key] = value
    return plan


def cmd_preview(args: argparse.Namespace) -> int:
    client = _client(args)
    preview = client.rollout_preview(_plan(args, client))
    if args.json:
        _print_json(preview)
        return 0
    print(f"eligible {preview['eligible']}, excluded {preview['excluded_count']}")
    print("waves: " + ", ".join(str(size) for size in preview["wave_sizes"]))  # devices per wave
    for reason, count in sorted(preview["excluded_reasons"].items(), key=lambda kv: -kv[1]):
        print(f"  excluded {count}: {reason}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    client = _client(args)
    rollout = client.rollout_create(_plan(args, client))
    if args.start:
        rollout = client.rollout_act(rollout["id"], "start")
    _show(args, rollout, f"rollout {rollout['id']} {rollout['status']}")
    if args.watch:
        return _watch(client, rollout["id"], args)
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    rollout = _client(args).rollout_act(args.id, args.verb, reason=args.reason)
    _show(args, rollout, rollout_summary(rollout))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    rollout = _client(args).rollout(args.id)
    _show(args, rollout, rollout_summary(rollout))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for rollout in _client(args).rollouts(limit=args.limit, **_pairs(args.filter, "--filter")):
        print(f"{rollout['id']:>6}  {rollout['status']:<12} {rollout.get('model_name') or ''} "
              f"v{rollout.get('version_number')}  {rollout.get('name', '')}")  # fmt: skip
    return 0


def _watch(client: FogdeckClient, rollout_id: int, args: argparse.Namespace) -> int:
    line = ProgressLine()
    outcome, rollout = client.rollout_watch(
        rollout_id, interval=args.interval, timeout=args.timeout,
        on_update=lambda r: line.show(rollout_summary(r)), stop_on_pause=not args.through_pause,
    )  # fmt: skip
    line.done()
    reason = f": {rollout['status_reason']}" if rollout.get("status_reason") else ""
    print(f"rollout {rollout_id} {outcome.name.lower()} ({rollout['status']}){reason}")
    return int(outcome)


def cmd_watch(args: argparse.Namespace) -> int:
    return _watch(_client(args), args.id, args)


def cmd_audit(args: argparse.Namespace) -> int:
    client = _client(args)
    filters = _pairs(args.filter, "--filter")
    entries = list(reversed(client.audit(limit=args.lines, **filters)))
    last = entries[-1]["id"] if entries else 0
    while True:
        for entry in entries:
            if args.json:
                print(json.dumps(entry, sort_keys=True), flush=True)
            else:
                where = f"{entry['object_type']}:{entry['object_id']} {entry.get('object_repr', '')}"
                print(f"{entry['created_at']}  {entry['actor']:<28} {entry['action']:<28} {where}", flush=True)
        if not args.follow:
            return 0
        time.sleep(args.interval)
        fresh = [e for e in client.audit(limit=200, **filters) if e["id"] > last]
        entries = list(reversed(fresh))
        last = max([last, *(e["id"] for e in entries)])


# --- parser ----------------------------------------------------------------------------------------
def _plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (with --number)")
    parser.add_argument("--number", type=int, help="version number of --model")
    parser.add_argument("--version-id", type=int, help="the version's id instead of --model/--number")
    parser.add_argument("--plan", help="a JSON file with the rollout plan (POST /api/v1/rollouts/ body)")
    parser.add_argument("--target", action="append", metavar="KEY=VALUE", help="device filter (tag=sim, tier=edge)")
    parser.add_argument("--waves", help="cumulative percents, e.g. 5,30,100")
    parser.add_argument("--name")
    parser.add_argument("--set", action="append", metavar="KEY=JSON", help="any plan field: health_gate='{\"…\"}'")


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between readings (default 2)")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds (exit 6)")
    parser.add_argument("--through-pause", action="store_true", help="keep watching a paused rollout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fogdeck", description="Fogdeck from the command line.",
                                     epilog="exit codes: 0 ok/completed, 1 API error, 2 usage, 3 aborted, "
                                            "4 rolled back, 5 paused, 6 watch timed out")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    parser.add_argument("--http-timeout", type=float, default=30.0)
    sub = parser.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", help="check a token and store it (0600) with the server URL")
    login.add_argument("--url", required=True)
    login.add_argument("--token", help="else read from stdin or prompted")
    login.set_defaults(func=cmd_login)

    devices = sub.add_parser("devices", help="list devices (filters as in the API: tier=edge status=online …)")
    devices.add_argument("--filter", "-f", action="append", metavar="KEY=VALUE")
    devices.add_argument("--limit", type=int)
    devices.set_defaults(func=cmd_devices)

    models = sub.add_parser("models", help="upload and publish model versions").add_subparsers(
        dest="models_command", required=True
    )
    upload = models.add_parser("upload", help="upload a draft version (shows progress)")
    upload.add_argument("model")
    upload.add_argument("file")
    upload.add_argument("--format", required=True, help="onnx, tflite, …")
    upload.add_argument("--framework", default="other")
    upload.add_argument("--requirements", help='JSON, e.g. {"runtime": "onnxruntime", "min_memory_mb": 512}')
    upload.add_argument("--label", default="")
    upload.add_argument("--create", action="store_true", help="create the model when it does not exist")
    upload.add_argument("--task", default="classification", help="task of a model created by --create")
    upload.add_argument("--publish", action="store_true", help="publish (sign) it right after the upload")
    upload.add_argument("--quiet", "-q", action="store_true", help="no progress")
    upload.set_defaults(func=cmd_upload)
    publish = models.add_parser("publish", help="sign and publish a draft")
    publish.add_argument("model")
    publish.add_argument("number", type=int)
    publish.set_defaults(func=cmd_publish)

    rollouts = sub.add_parser("rollouts", help="preview, start, watch and steer rollouts").add_subparsers(
        dest="rollouts_command", required=True
    )
    preview = rollouts.add_parser("preview", help="wave sizes and excluded devices; nothing is written")
    _plan_options(preview)
    preview.set_defaults(func=cmd_preview)
    create = rollouts.add_parser("create", help="create a rollout (draft), --start it, --watch it")
    _plan_options(create)
    create.add_argument("--start", action="store_true")
    create.add_argument("--watch", action="store_true", help="then watch it (exit code by outcome)")
    _watch_options(create)
    create.set_defaults(func=cmd_create)
    for verb in ROLLOUT_VERBS:
        act = rollouts.add_parser(verb, help=f"{verb} a rollout")
        act.add_argument("id", type=int)
        act.add_argument("--reason", default="", help="recorded in the audit log")
        act.set_defaults(func=cmd_act, verb=verb)
    watch = rollouts.add_parser("watch", help="live progress until it ends; exit code by outcome")
    watch.add_argument("id", type=int)
    _watch_options(watch)
    watch.set_defaults(func=cmd_watch)
    show = rollouts.add_parser("show")
    show.add_argument("id", type=int)
    show.set_defaults(func=cmd_show)
    listing = rollouts.add_parser("list")
    listing.add_argument("--filter", "-f", action="append", metavar="KEY=VALUE", help="status=running …")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=cmd_list)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    tail = audit.add_parser("tail", help="the newest entries, oldest first; --follow for new ones")
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.add_argument("--filter", "-f", action="append", metavar="KEY=VALUE", help="action=rollout. actor=…")
    tail.add_argument("--follow", action="store_true")
    tail.add_argument("--interval", type=float, default=2.0)
    tail.set_defaults(func=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"fogdeck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"fogdeck: {exc}" + (f" [request {exc.request_id}]" if exc.request_id else ""), file=sys.stderr)
        return EXIT_ERROR
    except TransportError as exc:
        print(f"fogdeck: cannot reach the server: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
