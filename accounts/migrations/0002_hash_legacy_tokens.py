"""Tokens made by rest_framework.authtoken (stored in clear) become hashed ApiTokens named `legacy`, which
expire after API_TOKEN_DEFAULT_DAYS; then the clear table is dropped, so no usable key is left in the
database. Their keys keep working until then (the first 12 characters find the row)."""

from __future__ import annotations

import datetime as dt
import hashlib

from django.conf import settings
from django.db import migrations
from django.utils import timezone

LEGACY_TABLE = "authtoken_token"


def hash_legacy_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if LEGACY_TABLE not in connection.introspection.table_names():
        return
    ApiToken = apps.get_model("accounts", "ApiToken")
    now = timezone.now()
    days = settings.API_TOKEN_DEFAULT_DAYS or 90
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id, created FROM {LEGACY_TABLE}")  # noqa: S608 - a constant
        rows = cursor.fetchall()
    ApiToken.objects.bulk_create(
        ApiToken(
            user_id=user_id,
            name="legacy",
            prefix=key[:12],
            key_hash=hashlib.sha256(key.encode()).hexdigest(),
            created_at=created or now,
            expires_at=now + dt.timedelta(days=days),
        )
        for key, user_id, created in rows
    )
    schema_editor.execute(f"DROP TABLE {LEGACY_TABLE}")
    schema_editor.execute("DELETE FROM django_migrations WHERE app = 'authtoken'")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunPython(hash_legacy_tokens, migrations.RunPython.noop)]
