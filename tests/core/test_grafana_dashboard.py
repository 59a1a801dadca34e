"""deploy/grafana: the sample dashboard only charts metrics Fogdeck exports."""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client import REGISTRY

from core import metrics
from stack.fleet_metrics import FleetStateCollector
from tests.processes import ROOT

SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def exported_names() -> set[str]:
    """Each process's metrics, and the fleet's state that /metrics reads from the database at scrape time."""
    names = {family.name for family in REGISTRY.collect()}  # counters are named without their _total here
    names |= {family.name for family in FleetStateCollector().collect()}
    return {name for name in names if name.startswith("fogdeck_")}


@pytest.mark.django_db
def test_every_metric_the_dashboard_charts_is_exported():
    assert metrics.HTTP_REQUESTS  # the module's metrics are registered
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "fogdeck-dashboard.json").read_text())
    charted = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"fogdeck_[a-z_]+", target["expr"]):
                for suffix in SUFFIXES:
                    name = name.removesuffix(suffix)
                charted.add(name)
    exported = {name.removesuffix("_total") for name in exported_names()}
    assert charted and charted <= exported, charted - exported
    assert len(charted) >= 12
