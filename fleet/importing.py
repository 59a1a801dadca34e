"""Bulk import of devices from CSV or JSON, row by row, with a per-row report.

Each good row is created or updated (matched by `uid`) in its own transaction, so a bad row is reported
with its line and reason while the good rows around it are kept.

CSV columns: uid, name, site (id or name), tier, parent (uid), arch, cpu, memory_mb, accelerator, job_dialect,
runtimes ("onnxruntime 1.18; tflite 2.14"), tags ("camera; line-3"); the export's status, last_seen
and agent_version are accepted and ignored (fleet/device_csv.py), so an exported file imports as it
is. JSON: a list of objects with the API's device fields, where `site` may be a name and `parent` a
uid. For JSON, `line` is the 1-based position of the object in the list.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from rest_framework.exceptions import ValidationError

from audit.actors import Actor
from audit.services import audit_record
from core.errors import flatten_errors

from .device_csv import EXPORT_COLUMNS, REPORTED_COLUMNS, unquote_cell
from .models import Device, Site
from .services import device_create, device_update

CSV_COLUMNS = EXPORT_COLUMNS  # the export's reported columns (status, last_seen, agent_version) are ignored


class ImportFileError(ValueError):
    """The file as a whole cannot be read (not a row problem)."""


@dataclass
class RowOutcome:
    line: int
    uid: str
    outcome: str  # created | updated | error
    errors: list[dict[str, str]] = field(default_factory=list)


@dataclass
class ImportReport:
    format: str
    rows: list[RowOutcome]

    def as_dict(self) -> dict[str, Any]:
        count = lambda kind: sum(1 for r in self.rows if r.outcome == kind)  # noqa: E731
        return {
            "format": self.format,
            "total": len(self.rows),
            "created": count("created"),
            "updated": count("updated"),
            "failed": count("error"),
            "rows": [r.__dict__ for r in sorted(self.rows, key=lambda r: r.line)],
        }


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.replace("|", ";").split(";") if item.strip()]


def _parse_runtimes(value: str) -> list[dict[str, str]] | str:
    runtimes = []
    for item in _split_list(value):
        name, _, version = item.partition(" ")
        runtimes.append({"name": name.strip(), "version": version.strip()})
    return runtimes


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise ImportFileError("the CSV file is empty")
    header = [h.strip() for h in reader.fieldnames]
    missing = [c for c in ("uid", "site", "tier", "arch", "memory_mb") if c not in header]
    if missing:
        raise ImportFileError(f"the CSV header lacks required columns: {', '.join(missing)}")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise ImportFileError(f"unknown CSV columns: {', '.join(unknown)}; expected {', '.join(CSV_COLUMNS)}")
    reader.fieldnames = header
    for raw in reader:
        row: dict[str, Any] = {
            k: unquote_cell((v or "").strip()) for k, v in raw.items() if k is not None and k not in REPORTED_COLUMNS
        }
        if None in raw:
            row["__extra__"] = raw[None]
        row["runtimes"] = _parse_runtimes(row.get("runtimes", ""))
        row["tags"] = _split_list(row.get("tags", ""))
        if row.get("parent") == "":
            row["parent"] = None  # an empty parent cell: no gateway (an update clears it)
        for optional in ("cpu", "accelerator", "name", "job_dialect"):
            if row.get(optional) == "":
                row.pop(optional)
        yield reader.line_num, row


def _json_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFileError(f"not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("devices"), list):
        data = data["devices"]
    if not isinstance(data, list):
        raise ImportFileError('JSON import must be a list of device objects (or {"devices": [...]})')
    for index, item in enumerate(data, start=1):
        yield index, item if isinstance(item, dict) else {"__not_an_object__": item}


def read_rows(upload: BinaryIO, filename: str) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    limit = settings.MAX_IMPORT_FILE_MB * 1024 * 1024
    raw = upload.read(limit + 1)
    if len(raw) > limit:
        raise ImportFileError(f"the file is larger than MAX_IMPORT_FILE_MB={settings.MAX_IMPORT_FILE_MB}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFileError("the file is not UTF-8 text") from None
    is_json = filename.lower().endswith(".json") or text.lstrip().startswith(("[", "{"))
    kind = "json" if is_json else "csv"
    rows = list(_json_rows(text) if is_json else _csv_rows(text))
    if len(rows) > settings.MAX_IMPORT_ROWS:
        raise ImportFileError(f"{len(rows)} rows is more than MAX_IMPORT_ROWS={settings.MAX_IMPORT_ROWS}")
    if not rows:
        raise ImportFileError("the file has no device rows")
    return kind, rows


class _Pending(Exception):
    """The row's parent is defined later in the same file."""


def _resolve_references(row: dict[str, Any], sites_by_name: dict[str, int], file_uids: set[str]) -> dict[str, Any]:
    data = dict(row)
    if "__not_an_object__" in data:
        raise ValidationError({"row": ["each entry must be a JSON object"]})
    if "__extra__" in data:
        raise ValidationError({"row": [f"more values than columns: {data['__extra__']}"]})
    site = data.get("site")
    if isinstance(site, str) and site and not site.isdigit():
        if site not in sites_by_name:
            raise ValidationError({"site": [f"no site named {site!r}"]})
        data["site"] = sites_by_name[site]
    parent = data.get("parent")
    if isinstance(parent, str) and parent and not parent.isdigit():
        parent_id = Device.objects.filter(uid=parent).values_list("pk", flat=True).first()
        if parent_id is None:
            if parent in file_uids and parent != data.get("uid"):
                raise _Pending
            raise ValidationError({"parent": [f"no device with uid {parent!r}"]})
        data["parent"] = parent_id
    if not data.get("name"):
        data["name"] = data.get("uid", "")
    return data


def devices_import(*, actor: Actor, upload: BinaryIO, filename: str) -> ImportReport:
    """Create or update each row's device; report every row. Raises ImportFileError for an unreadable file."""
    from .api.serializers import DeviceSerializer

    kind, rows = read_rows(upload, filename)
    sites_by_name = dict(Site.objects.values_list("name", "pk"))
    file_uids = {str(row.get("uid")) for _, row in rows if row.get("uid")}
    outcomes: list[RowOutcome] = []
    pending = rows
    while pending:
        deferred: list[tuple[int, dict[str, Any]]] = []
        for line, row in pending:
            uid = str(row.get("uid", ""))
            try:
                # a savepoint per row: a database error in one row must not leave the caller's transaction
                # aborted (every later row, and the commit, would fail with it)
                with transaction.atomic():
                    data = _resolve_references(row, sites_by_name, file_uids)
                    existing = Device.objects.filter(uid=uid).first() if uid else None
                    serializer = DeviceSerializer(instance=existing, data=data, partial=existing is not None)
                    serializer.is_valid(raise_exception=True)
                    if existing:
                        device_update(actor=actor, device=existing, **serializer.to_service_kwargs())
                        outcome = RowOutcome(line, uid, "updated")
                    else:
                        device_create(actor=actor, **serializer.to_service_kwargs())
                        outcome = RowOutcome(line, uid, "created")
                outcomes.append(outcome)
            except _Pending:
                deferred.append((line, row))
            except ValidationError as exc:
                outcomes.append(RowOutcome(line, uid, "error", flatten_errors(exc.detail)))
            except Exception as exc:  # a row must never sink the import; report it and go on
                outcomes.append(RowOutcome(line, uid, "error", [{"field": "", "reason": str(exc)}]))
        if len(deferred) == len(pending):  # no progress: the parents never resolved (a cycle)
            for line, row in deferred:
                outcomes.append(
                    RowOutcome(
                        line,
                        str(row.get("uid", "")),
                        "error",
                        [{"field": "parent", "reason": f"parent {row.get('parent')!r} could not be created"}],
                    )
                )
            break
        pending = deferred
    report = ImportReport(kind, outcomes)
    summary = report.as_dict()
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="device.import",
            object_type="device",
            object_id="",
            object_repr=filename[:200],
            changes={k: summary[k] for k in ("format", "total", "created", "updated", "failed")},
        )
    return report
