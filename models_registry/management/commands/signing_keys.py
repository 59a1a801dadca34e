from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from models_registry import keys


class Command(BaseCommand):
    help = (
        "Manage the Ed25519 keys that sign published model versions: generate (the first key), "
        "rotate (a new active key; old public keys stay served), list."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("operation", choices=["generate", "rotate", "list"])

    def handle(self, *args: Any, operation: str, **options: Any) -> None:
        if operation == "list":
            for key in keys.all_keys():
                created = key.created_at.isoformat() if key.created_at else "-"
                flag = "active" if key.active else "      "
                self.stdout.write(f"{key.key_id}  {flag}  {created}  {key.public_key_b64}  ({key.source})")
            return
        if settings.SIGNING_KEY:
            self.stderr.write(
                self.style.WARNING("SIGNING_KEY is set and stays the active key; the new key only joins the directory")
            )
        if operation == "generate" and any(k.active for k in keys.directory_keys()):
            raise CommandError(f"{settings.SIGNING_KEY_DIR} already has an active key; use `rotate` to replace it")
        key = keys.generate_key(activate=True)
        self.stdout.write(self.style.SUCCESS(f"{operation}: new active key {key.key_id} in {key.source}"))
        self.stdout.write(f"public key (base64 raw): {key.public_key_b64}")
