from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from audit.actors import Actor
from telemetry.drift import DriftEvaluation, drift_evaluate


class Command(BaseCommand):
    help = "Score input drift once per (version with a reference profile, site) and open or resolve drift alerts."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--window-minutes",
            type=int,
            default=None,
            help=f"input summaries received over the last N minutes (default DRIFT_WINDOW_MINUTES, "
            f"{settings.DRIFT_WINDOW_MINUTES})",
        )

    def handle(self, *args: Any, window_minutes: int | None, **options: Any) -> None:
        if window_minutes is not None and window_minutes < 1:
            self.stderr.write("--window-minutes must be at least 1")
            raise SystemExit(2)
        window = dt.timedelta(minutes=window_minutes) if window_minutes else None
        self.stdout.write(f"scoring drift (PSI threshold {settings.DRIFT_PSI_THRESHOLD}) …")
        results = drift_evaluate(actor=Actor.system("manage.py evaluate_drift"), window=window, progress=self._line)
        opened = sum(r.outcome == "opened" for r in results)
        self.stdout.write(f"done: {len(results)} (version, site) pairs scored, {opened} alerts opened")

    def _line(self, result: DriftEvaluation) -> None:
        figures = "too few values" if result.psi is None else f"psi {result.psi:.3f} ks {result.ks:.3f}"
        top = ", ".join(f"{f.feature} {f.psi:.2f}" for f in result.features[:3])
        self.stdout.write(
            f"  {result.model} v{result.version} @ {result.site}: {result.outcome} ({figures})"
            + (f" — {top}" if top else "")
        )
