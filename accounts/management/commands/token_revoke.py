from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiToken
from accounts.services import api_token_revoke
from audit.actors import Actor


class Command(BaseCommand):
    help = "Revoke USER's API token named NAME (it stops working at once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", required=True)

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        token = ApiToken.objects.filter(user__username=username, name=name, revoked_at__isnull=True).first()
        if token is None:
            raise CommandError(f"{username} has no live token named {name!r}")
        api_token_revoke(actor=Actor.system("manage.py token_revoke"), token=token)
        self.stdout.write(f"revoked {token}")
