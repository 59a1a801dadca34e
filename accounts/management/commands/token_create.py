from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.services import TokenError, api_token_create
from audit.actors import Actor


class Command(BaseCommand):
    help = (
        "Create a named API token for USER and print its key (on stdout, alone, so `TOKEN=$(...)` works). "
        "The key is shown this once: only its hash is stored."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", required=True, help="what the token is for, e.g. ci (unique per user)")
        parser.add_argument(
            "--days", type=int, default=None, help="days until it expires (default API_TOKEN_DEFAULT_DAYS; 0: never)"
        )

    def handle(self, *args: Any, username: str, name: str, days: int | None, **options: Any) -> None:
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        try:
            issued = api_token_create(actor=Actor.system("manage.py token_create"), user=user, name=name, days=days)
        except TokenError as exc:
            raise CommandError(str(exc)) from None
        expires = issued.token.expires_at.isoformat() if issued.token.expires_at else "never"
        self.stderr.write(f"token {name!r} for {username}, expires {expires}; keep the key, it is not shown again:")
        self.stdout.write(issued.key)
