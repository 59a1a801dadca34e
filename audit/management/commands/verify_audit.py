from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_verify_chain


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exit non-zero naming the first bad entry."

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_verify_chain()
        if report.problem is not None:
            where = f"entry #{report.problem.entry_id}" if report.problem.entry_id else "chain"
            raise CommandError(
                f"audit chain BROKEN at {where}: {report.problem.reason} ({report.checked} entries verified before it)"
            )
        self.stdout.write(self.style.SUCCESS(f"audit chain OK: {report.checked} entries verified"))
