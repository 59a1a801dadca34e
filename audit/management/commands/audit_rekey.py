from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_rekey


class Command(BaseCommand):
    help = (
        "Re-sign the audit chain with the current AUDIT_HMAC_KEY and write a fresh checkpoint: once after "
        "upgrading from the unkeyed chain, or after rotating the key (--old-key-file). The chain is verified "
        "first and a broken one is refused."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--old-key-file", type=Path, help="file holding the previous AUDIT_HMAC_KEY")
        parser.add_argument(
            "--force",
            action="store_true",
            help="re-sign even a broken chain (investigate first: it hides the break)",
        )

    def handle(self, *args: Any, old_key_file: Path | None, force: bool, **options: Any) -> None:
        old_key = old_key_file.read_text().strip() if old_key_file else None
        before = audit_rekey(old_key=old_key, force=force)
        if before.problem is not None and not force:
            raise CommandError(
                f"refusing to re-sign a broken chain: entry #{before.problem.entry_id}: {before.problem.reason}"
            )
        self.stdout.write(
            self.style.SUCCESS(f"audit chain re-signed: {before.checked} entries ({before.legacy} were unkeyed)")
        )
