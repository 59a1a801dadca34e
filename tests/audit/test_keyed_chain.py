"""Finding 10: the chain is keyed (HMAC under a key outside the database) and its head is checkpointed
outside the database, so neither re-hashing after an edit nor deleting the newest entries passes."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from audit import checkpoint
from audit.actors import Actor
from audit.models import GENESIS_HASH, AuditChainHead, AuditEntry
from audit.services import audit_record, audit_verify_chain

pytestmark = pytest.mark.django_db


def record(n: int, capture) -> list[AuditEntry]:
    """n entries, each in its own committed-looking transaction (on-commit hooks run, as in production)."""
    entries = []
    for i in range(n):
        with capture(execute=True), transaction.atomic():
            entries.append(
                audit_record(actor=Actor.system("tests"), action="thing.touch", object_type="thing", object_id=i)
            )
    return entries


def rows() -> list[AuditEntry]:
    return list(AuditEntry.objects.order_by("id"))


def rewrite_chain(entries: list[AuditEntry], hasher) -> None:
    """What someone with database access does: recompute every hash from the first edited entry on, with
    `hasher` (they have no key), and point the head row at the result."""
    prev = GENESIS_HASH
    with connection.cursor() as cursor:
        for entry in entries:
            entry.prev_hash = prev
            entry.hash = prev = hasher(entry)
            cursor.execute(
                "UPDATE audit_auditentry SET actor = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [entry.actor, entry.prev_hash, entry.hash, entry.pk],
            )
        cursor.execute(
            "UPDATE audit_auditchainhead SET last_entry_id = %s, last_hash = %s, count = %s WHERE id = 1",
            [entries[-1].pk, prev, len(entries)],
        )


def test_editing_an_old_entry_and_rehashing_everything_after_it_is_detected(django_capture_on_commit_callbacks):
    record(4, django_capture_on_commit_callbacks)
    entries = rows()
    entries[1].actor = "user:mallory"
    rewrite_chain(entries, lambda e: hashlib.sha256(e.canonical_content().encode()).hexdigest())
    report = audit_verify_chain()
    assert not report.ok
    with pytest.raises(CommandError, match="BROKEN"):
        call_command("verify_audit")


def test_rehashing_with_a_guessed_key_is_detected_even_without_a_checkpoint(django_capture_on_commit_callbacks):
    record(3, django_capture_on_commit_callbacks)
    settings_file = checkpoint.read()
    assert settings_file is not None
    entries = rows()
    entries[0].actor = "user:mallory"
    rewrite_chain(entries, lambda e: e.compute_hash(key="fogdeck-insecure-development-key-change-me"))
    report = audit_verify_chain()
    assert not report.ok and report.problem.entry_id == entries[0].pk and "edited" in report.problem.reason


def test_deleting_the_newest_entries_and_rewinding_the_head_is_detected(django_capture_on_commit_callbacks):
    entries = record(5, django_capture_on_commit_callbacks)
    kept = entries[2]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditentry WHERE id > %s", [kept.pk])
        cursor.execute(
            "UPDATE audit_auditchainhead SET last_entry_id = %s, last_hash = %s, count = 3 WHERE id = 1",
            [kept.pk, kept.hash],
        )
    report = audit_verify_chain()
    assert not report.ok and "newest entries were deleted" in report.problem.reason
    assert f"#{entries[-1].pk}" in report.problem.reason
    with pytest.raises(CommandError, match="newest entries were deleted"):
        call_command("verify_audit")


def test_the_checkpoint_follows_each_commit_and_only_moves_forward(django_capture_on_commit_callbacks, settings):
    entries = record(2, django_capture_on_commit_callbacks)
    stored = checkpoint.read()
    assert (stored.count, stored.last_id, stored.last_hash) == (2, entries[-1].pk, entries[-1].hash)
    assert stored.is_authentic()
    checkpoint.write(checkpoint.Checkpoint(1, entries[0].pk, entries[0].hash))  # a late, older writer
    assert checkpoint.read().count == 2
    if not settings.REDIS_URL:
        assert stat.S_IMODE(settings.AUDIT_CHECKPOINT_FILE.stat().st_mode) == 0o600
    report = audit_verify_chain()
    assert report.ok and report.checkpoint == "ok"


def test_a_rolled_back_append_leaves_the_checkpoint_alone(django_capture_on_commit_callbacks):
    record(1, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            audit_record(actor=Actor.system("tests"), action="thing.touch", object_type="thing")
            raise RuntimeError("the change failed")
    assert checkpoint.read().count == 1 and audit_verify_chain().ok


def test_a_forged_checkpoint_is_refused(django_capture_on_commit_callbacks, settings):
    entries = record(2, django_capture_on_commit_callbacks)
    forged = checkpoint.Checkpoint(1, entries[0].pk, entries[0].hash, mac="0" * 64)
    if settings.REDIS_URL:
        checkpoint._redis(settings.REDIS_URL).hset(
            settings.AUDIT_CHECKPOINT_REDIS_KEY, mapping={"count": 1, "last_id": forged.last_id, "mac": forged.mac}
        )
    else:
        settings.AUDIT_CHECKPOINT_FILE.write_text(
            json.dumps({"count": 1, "last_id": forged.last_id, "last_hash": forged.last_hash, "mac": forged.mac})
        )
    report = audit_verify_chain()
    assert not report.ok and "not signed with the audit key" in report.problem.reason


def test_verify_audit_can_require_a_checkpoint():
    with transaction.atomic():  # never committed: no checkpoint is written
        audit_record(actor=Actor.system("tests"), action="thing.touch", object_type="thing")
    call_command("verify_audit")  # warns only
    with pytest.raises(CommandError, match="no checkpoint"):
        call_command("verify_audit", require_checkpoint=True)


def make_legacy(entries: list[AuditEntry]) -> None:
    rewrite_chain(entries, lambda e: e.compute_legacy_hash())


def test_an_unkeyed_chain_from_before_the_upgrade_verifies_and_audit_rekey_signs_it(
    django_capture_on_commit_callbacks,
):
    record(3, django_capture_on_commit_callbacks)
    make_legacy(rows())
    settings_checkpoint_reset()
    report = audit_verify_chain()
    assert report.ok and report.legacy == 3
    # new entries are keyed and cover the unkeyed ones: editing those now breaks the first keyed entry
    record(1, django_capture_on_commit_callbacks)
    assert audit_verify_chain().ok and audit_verify_chain().legacy == 3
    with django_capture_on_commit_callbacks(execute=True):
        call_command("audit_rekey")
    after = audit_verify_chain()
    assert after.ok and after.legacy == 0 and after.checked == 4 and after.checkpoint == "ok"
    assert AuditChainHead.objects.get().last_hash == rows()[-1].hash


def test_unkeyed_entries_cannot_be_rewritten_once_a_keyed_one_follows(django_capture_on_commit_callbacks):
    record(3, django_capture_on_commit_callbacks)
    make_legacy(rows())
    settings_checkpoint_reset()
    record(1, django_capture_on_commit_callbacks)
    legacy = rows()[:3]
    legacy[1].actor = "user:mallory"
    prev = GENESIS_HASH
    with connection.cursor() as cursor:
        for entry in legacy:
            entry.prev_hash = prev
            entry.hash = prev = entry.compute_legacy_hash()
            cursor.execute(
                "UPDATE audit_auditentry SET actor = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [entry.actor, entry.prev_hash, entry.hash, entry.pk],
            )
    report = audit_verify_chain()
    assert not report.ok and "prev_hash does not match" in report.problem.reason


def test_audit_rekey_refuses_a_broken_chain(django_capture_on_commit_callbacks):
    record(3, django_capture_on_commit_callbacks)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditentry SET actor = 'user:mallory' WHERE id = %s", [rows()[1].pk])
    with pytest.raises(CommandError, match="refusing to re-sign a broken chain"):
        call_command("audit_rekey")


def test_audit_rekey_rotates_the_key(django_capture_on_commit_callbacks, settings, tmp_path):
    record(2, django_capture_on_commit_callbacks)
    old_key = settings.AUDIT_HMAC_KEY
    (tmp_path / "old").write_text(old_key)
    settings.AUDIT_HMAC_KEY = "a-new-audit-key-" + "n" * 40
    assert not audit_verify_chain().ok  # the checkpoint and entries are under the old key
    with django_capture_on_commit_callbacks(execute=True):
        call_command("audit_rekey", old_key_file=tmp_path / "old")
    assert audit_verify_chain().ok
    assert not audit_verify_chain(key=old_key).ok


def settings_checkpoint_reset() -> None:
    """The install being upgraded had no checkpoint (it predates them)."""
    from django.conf import settings

    if settings.REDIS_URL:
        checkpoint._redis(settings.REDIS_URL).delete(settings.AUDIT_CHECKPOINT_REDIS_KEY)
    else:
        settings.AUDIT_CHECKPOINT_FILE.unlink(missing_ok=True)
