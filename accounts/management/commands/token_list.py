from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts.models import ApiToken


class Command(BaseCommand):
    help = "List API tokens (never their keys): user, name, prefix, expiry, last use, revocation."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username", nargs="?")

    def handle(self, *args: Any, username: str | None, **options: Any) -> None:
        tokens = ApiToken.objects.select_related("user").order_by("user__username", "name")
        if username:
            tokens = tokens.filter(user__username=username)
        for t in tokens:
            state = "revoked" if t.revoked_at else ("live" if t.is_usable else "expired")
            self.stdout.write(
                f"{t.user.get_username():<20} {t.name:<20} {t.prefix} {state:<8} "
                f"expires={t.expires_at.isoformat() if t.expires_at else 'never'} "
                f"last_used={t.last_used_at.isoformat() if t.last_used_at else '-'}"
            )
