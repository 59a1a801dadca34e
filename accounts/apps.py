from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and API tokens"

    def ready(self) -> None:
        from . import schema, signals  # noqa: F401 - schema registers the token scheme

        signals.connect()
