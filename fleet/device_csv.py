"""The device CSV: what the device list exports (UI and `GET /api/v1/devices/export/`) is what the importer
reads back (`fleet/importing.py`): the importer's columns first, in its formats (site by name, parent by
uid, `;`-separated runtimes "name version" and tags), then the columns devices report themselves
(status, last_seen, agent_version), which the importer accepts and ignores.

Cells that a spreadsheet would run as a formula are written with a leading `'` (core/csv_export.py); the
importer drops that quote again, so such a value round-trips too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.csv_export import FORMULA_TRIGGERS, csv_lines

from .models import Device

IMPORT_COLUMNS = (
    "uid",
    "name",
    "site",
    "tier",
    "parent",
    "arch",
    "cpu",
    "memory_mb",
    "accelerator",
    "job_dialect",
    "runtimes",
    "tags",
)
REPORTED_COLUMNS = ("status", "last_seen", "agent_version")  # set by the device, never by an import
EXPORT_COLUMNS = IMPORT_COLUMNS + REPORTED_COLUMNS
LIST_SEPARATOR = "; "


def device_csv_row(device: Device) -> list[Any]:
    """One device in EXPORT_COLUMNS' order (expects `Device.objects.with_inventory()`)."""
    return [
        device.uid,
        device.name,
        device.site.name,
        device.tier,
        device.parent.uid if device.parent_id else "",  # type: ignore[union-attr]
        device.arch,
        device.cpu,
        device.memory_mb,
        device.accelerator,
        device.job_dialect,
        LIST_SEPARATOR.join(f"{r['name']} {r['version']}" for r in device.runtime_list),
        LIST_SEPARATOR.join(device.tag_list),
        device.status,
        device.last_seen.isoformat() if device.last_seen else "",
        device.agent_version,
    ]


def device_csv_lines(devices: Any) -> Iterator[str]:
    """The CSV of a device queryset, streamed (for a StreamingHttpResponse)."""
    return csv_lines(EXPORT_COLUMNS, (device_csv_row(d) for d in devices.iterator(chunk_size=1000)))


def unquote_cell(value: str) -> str:
    """A cell as exported, back to its value: the quote csv_export put before a formula trigger goes."""
    if value.startswith("'") and value[1:].startswith(FORMULA_TRIGGERS):
        return value[1:]
    return value
