from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_verify_chain


class Command(BaseCommand):
    help = (
        "Verify the audit trail's keyed hash chain and its checkpoint outside the database; exit non-zero "
        "naming the first bad entry. Prints the checkpoint so it can be shipped to a log kept elsewhere."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--require-checkpoint",
            action="store_true",
            help="fail when entries exist but no checkpoint does (run it this way from cron once deployed)",
        )

    def handle(self, *args: Any, require_checkpoint: bool, **options: Any) -> None:
        report = audit_verify_chain()
        if report.problem is not None:
            where = f"entry #{report.problem.entry_id}" if report.problem.entry_id else "chain"
            raise CommandError(
                f"audit chain BROKEN at {where}: {report.problem.reason} ({report.checked} entries verified before it)"
            )
        if report.checkpoint == "missing" and require_checkpoint:
            raise CommandError(
                f"audit chain has {report.checked} entries but no checkpoint ({report.checkpoint_detail}): "
                "truncation of the newest entries cannot be ruled out"
            )
        if report.legacy:
            self.stderr.write(
                f"warning: the first {report.legacy} entries are unkeyed (written before the keyed chain); "
                "run `manage.py audit_rekey` to sign them"
            )
        if report.checkpoint == "missing":
            self.stderr.write(f"warning: {report.checkpoint_detail}: deleting the newest entries would go unseen")
        self.stdout.write(
            self.style.SUCCESS(f"audit chain OK: {report.checked} entries verified")
            + f" (checkpoint {report.checkpoint}: {report.checkpoint_detail})"
        )
