from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from django.conf import settings
from django.db import models

GENESIS_HASH = "0" * 64


class AppendOnlyError(RuntimeError):
    pass


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("audit entries are append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries are append-only")

    def for_object(self, object_type: str, object_id: object) -> AuditEntryQuerySet:
        return self.filter(object_type=object_type, object_id=str(object_id))


class AuditEntry(models.Model):
    """One mutating action. `hash` is the HMAC-SHA256, under settings.AUDIT_HMAC_KEY (never stored in the
    database), of this entry's content and the previous entry's hash: editing an entry, even re-hashing
    everything after it, needs the key."""

    created_at = models.DateTimeField()
    actor = models.CharField(max_length=200, help_text="kind:name, e.g. user:alice, system:celery")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=100)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=100, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            # the object's history (version page, device timeline)
            models.Index(fields=["object_type", "object_id", "id"], name="audit_object_idx"),
            # "what did this person do", filtered by time
            models.Index(fields=["actor", "created_at"], name="audit_actor_time_idx"),
            models.Index(fields=["created_at"], name="audit_time_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.actor} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not kwargs.get("force_insert"):
            raise AppendOnlyError("audit entries are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries are append-only")

    def canonical_content(self) -> str:
        """The exact text the hash covers; any edit to a stored field changes it."""
        return json.dumps(
            {
                "created_at": self.created_at.isoformat(),
                "actor": self.actor,
                "action": self.action,
                "object_type": self.object_type,
                "object_id": self.object_id,
                "object_repr": self.object_repr,
                "changes": self.changes,
                "request_id": self.request_id,
                "prev_hash": self.prev_hash,
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )

    def compute_hash(self, key: str | None = None) -> str:
        secret = (key if key is not None else settings.AUDIT_HMAC_KEY).encode()
        return hmac.new(secret, self.canonical_content().encode(), hashlib.sha256).hexdigest()

    def compute_legacy_hash(self) -> str:
        """The unkeyed SHA-256 that entries written before the keyed chain carry (see audit_rekey)."""
        return hashlib.sha256(self.canonical_content().encode()).hexdigest()


class AuditChainHead(models.Model):
    """The single row that serializes appends and remembers the last entry. It lives in the database, so
    someone who can write there can rewind it with the entries; the keyed checkpoint outside the database
    (audit/checkpoint.py) is what catches that."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_entry_id = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    count = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"audit head #{self.last_entry_id} ({self.count} entries)"
