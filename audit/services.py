"""Writing and verifying the audit chain.

Every service that changes state calls `audit_record` inside its own transaction, so the entry commits
or rolls back with the change it describes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from core.context import current_request_id

from . import checkpoint
from .actors import Actor
from .models import GENESIS_HASH, AuditChainHead, AuditEntry


def _jsonable(value: Any) -> Any:
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return value


def snapshot(instance: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """The audited fields of a row as JSON values (foreign keys by id)."""
    out: dict[str, Any] = {}
    for name in fields:
        field = instance._meta.get_field(name)
        attname = getattr(field, "attname", name)
        out[name] = _jsonable(getattr(instance, attname))
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Changed fields only, as {field: {"before": …, "after": …}}."""
    keys = before.keys() | after.keys()
    return {
        key: {"before": before.get(key), "after": after.get(key)}
        for key in sorted(keys)
        if before.get(key) != after.get(key)
    }


@dataclass(frozen=True)
class AuditSpec:
    """One entry to append, for `audit_record_many`."""

    actor: Actor
    action: str
    object_type: str
    object_id: object = ""
    object_repr: str = ""
    changes: dict[str, Any] | None = None


def audit_record(
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: object = "",
    object_repr: str = "",
    changes: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry to the chain. Must run inside the caller's transaction."""
    spec = AuditSpec(actor, action, object_type, object_id, object_repr, changes)
    entries = audit_record_many([spec])
    return entries[0] if entries else AuditEntry(action=action)  # queued inside audit_deferred


_deferred: ContextVar[list[tuple[AuditSpec, Callable[[], None]]] | None] = ContextVar("audit_deferred", default=None)


@contextmanager
def audit_deferred() -> Iterator[None]:
    """Entries recorded inside the block are appended to the chain together when it ends, still inside
    the caller's transaction, so the chain head (which every writer locks in turn) is held only for that
    insert and the commit, not for the whole block. The MQTT bridges' batches and a rollout tick hold
    their transactions for a while; with the head locked from their first entry on, two bridges and a
    worker took turns instead of working side by side.

    An entry recorded in a savepoint that is rolled back is dropped with it (Django's own bookkeeping of
    on-commit callbacks per savepoint tells which survived). Nested blocks join the outer one.
    """
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("audit_deferred must run inside the transaction of the changes it records")
    if _deferred.get() is not None:
        yield
        return
    pending: list[tuple[AuditSpec, Callable[[], None]]] = []
    token = _deferred.set(pending)
    try:
        yield
    finally:
        _deferred.reset(token)
    markers = {id(marker) for _, marker in pending}
    alive = {id(func) for _, func, _ in connection.run_on_commit if id(func) in markers}
    connection.run_on_commit = [entry for entry in connection.run_on_commit if id(entry[1]) not in markers]
    _append([spec for spec, marker in pending if id(marker) in alive])


def _noop() -> None:
    return None


def audit_record_many(specs: Sequence[AuditSpec]) -> list[AuditEntry]:
    """Append entries to the chain in the given order, in one insert. Must run inside the caller's transaction.

    The chain head row is locked first, so concurrent writers append one after another and every
    entry's `prev_hash` is the hash of the entry just before it; a batch costs three statements however
    many entries it has (the MQTT bridge and rollout dispatch record thousands of job changes a minute).
    Inside `audit_deferred` the entries are only queued (and not returned): the block appends them.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    if not specs:
        return []
    pending = _deferred.get()
    if pending is not None:
        for spec in specs:
            # a marker per entry: Django forgets it if the savepoint around this call is rolled back
            marker = functools.partial(_noop)
            transaction.on_commit(marker)
            pending.append((spec, marker))
        return []
    return _append(specs)


def _append(specs: Sequence[AuditSpec]) -> list[AuditEntry]:
    if not specs:
        return []
    head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
    request_id = current_request_id.get()
    now = timezone.now()
    prev_hash = head.last_hash
    entries: list[AuditEntry] = []
    for spec in specs:
        entry = AuditEntry(
            created_at=now,
            actor=spec.actor.label[:200],
            actor_user_id=spec.actor.user_id,
            action=spec.action,
            object_type=spec.object_type,
            object_id=str(spec.object_id),
            object_repr=spec.object_repr[:200],
            # normalized through JSON so the hash covers exactly what the database gives back
            changes=json.loads(json.dumps(_jsonable(spec.changes or {}), sort_keys=True)),
            request_id=request_id,
            prev_hash=prev_hash,
        )
        entry.hash = prev_hash = entry.compute_hash()
        entries.append(entry)
    if len(entries) == 1:
        entries[0].save(force_insert=True)
    else:
        AuditEntry.objects.bulk_create(entries, batch_size=1000)
    if entries[-1].pk is None:  # a backend that doesn't return ids from bulk inserts
        entries[-1].pk = AuditEntry.objects.filter(hash=entries[-1].hash).values_list("pk", flat=True).get()
    AuditChainHead.objects.filter(pk=1).update(
        last_entry_id=entries[-1].pk, last_hash=entries[-1].hash, count=models.F("count") + len(entries)
    )
    # the head row is locked, so head.count is exact; the checkpoint outside the database follows the commit
    newest = checkpoint.Checkpoint(head.count + len(entries), entries[-1].pk, entries[-1].hash)
    transaction.on_commit(functools.partial(checkpoint.advance, newest), robust=True)
    return entries


@dataclass(frozen=True)
class ChainProblem:
    entry_id: int | None
    reason: str


@dataclass(frozen=True)
class ChainReport:
    checked: int
    problem: ChainProblem | None
    legacy: int = 0  # unkeyed entries from before the keyed chain, at its start (audit_rekey turns them keyed)
    checkpoint: str = "missing"  # "ok", "missing", "behind" (entries committed after it was last written)
    checkpoint_detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def _entries_in_order() -> Iterator[AuditEntry]:
    return AuditEntry.objects.order_by("id").iterator(chunk_size=2000)


def audit_verify_chain(*, key: str | None = None) -> ChainReport:
    """Walk the chain from the start; report the first entry that was edited, deleted around, or moved,
    and whether the newest entries were deleted (the head row and the keyed checkpoint outside the
    database both name the newest entry they saw).

    Each entry's hash must be its HMAC under the audit key (`key`, default settings.AUDIT_HMAC_KEY).
    Entries written before the chain was keyed (plain SHA-256) are accepted only as an unbroken run at
    the start: the first keyed entry covers the last of them, so they cannot be rewritten either."""
    stored = checkpoint.read()
    if stored is not None and not stored.is_authentic(key):
        return ChainReport(
            0,
            ChainProblem(
                None,
                f"the checkpoint in {checkpoint.location()} is not signed with the audit key: "
                "it was forged, or AUDIT_HMAC_KEY changed (audit_rekey re-signs it)",
            ),
        )
    expected_prev = GENESIS_HASH
    checked = legacy = 0
    keyed_seen = False
    last: AuditEntry | None = None

    def report(problem: ChainProblem | None, state: str = "missing", detail: str = "") -> ChainReport:
        return ChainReport(checked, problem, legacy, state, detail)

    for entry in _entries_in_order():
        if entry.prev_hash != expected_prev:
            where = f"entry #{last.pk}" if last else "the start of the chain"
            return report(
                ChainProblem(
                    entry.pk,
                    f"prev_hash does not match {where}: an entry before it was deleted, inserted or reordered",
                )
            )
        if entry.compute_hash(key) == entry.hash:
            keyed_seen = True
        elif not keyed_seen and entry.compute_legacy_hash() == entry.hash:
            legacy += 1
        else:
            return report(ChainProblem(entry.pk, "content does not match its hash: it was edited"))
        expected_prev = entry.hash
        last = entry
        checked += 1
        if (
            stored is not None
            and checked == stored.count
            and (entry.pk, entry.hash)
            != (
                stored.last_id,
                stored.last_hash,
            )
        ):
            return report(
                ChainProblem(
                    entry.pk,
                    f"the checkpoint outside the database names entry #{stored.last_id} as entry number "
                    f"{stored.count}, but the chain has #{entry.pk} with another hash there: the chain was "
                    "rewritten or replaced",
                )
            )
    head = AuditChainHead.objects.filter(pk=1).first()
    head_id, head_hash, head_count = (head.last_entry_id, head.last_hash, head.count) if head else (0, GENESIS_HASH, 0)
    last_id = last.pk if last else 0
    if stored is not None and stored.count > checked:
        return report(
            ChainProblem(
                last_id or None,
                f"the checkpoint outside the database names entry #{stored.last_id} ({stored.count} entries) "
                f"but the chain ends at #{last_id} ({checked} entries): the newest entries were deleted "
                "(or the database was restored from an older backup)",
            )
        )
    if head_hash != expected_prev or head_id != last_id:
        return report(
            ChainProblem(
                head_id or None,
                f"the chain head names entry #{head_id} but the last entry is #{last_id}: "
                "the newest entries were deleted",
            )
        )
    if head_count != checked:
        return report(ChainProblem(None, f"the chain head counts {head_count} entries but {checked} exist"))
    if stored is None:
        return report(None, "missing" if checked else "ok", f"no checkpoint in {checkpoint.location()}")
    state = "ok" if stored.count == checked else "behind"
    return report(None, state, f"{checkpoint.location()}: {stored.describe()}")


def audit_rekey(*, old_key: str | None = None, force: bool = False) -> ChainReport:
    """Re-sign the whole chain with the current AUDIT_HMAC_KEY: after an upgrade from the unkeyed chain,
    or when the key is rotated (`old_key` is the previous one). The chain is verified with the old key
    first and a broken chain is refused unless `force`: re-signing it would make tampering look valid.
    Runs in one transaction with the head locked, then writes a fresh checkpoint."""
    from django.db import connection

    with transaction.atomic():
        AuditChainHead.objects.select_for_update().get_or_create(pk=1)  # appends wait for the rewrite
        before = audit_verify_chain(key=old_key) if old_key is not None else audit_verify_chain()
        if not before.ok and not force:
            return before
        prev = GENESIS_HASH
        rows: list[tuple[str, str, int]] = []
        last: AuditEntry | None = None
        count = 0
        for entry in _entries_in_order():
            entry.prev_hash = prev
            entry.hash = prev = entry.compute_hash()
            rows.append((entry.prev_hash, entry.hash, entry.pk))
            last = entry
            count += 1
        table = AuditEntry._meta.db_table
        with connection.cursor() as cursor:
            # the model refuses updates (append-only); this is the one sanctioned rewrite
            for start in range(0, len(rows), 1000):
                cursor.executemany(
                    f"UPDATE {table} SET prev_hash = %s, hash = %s WHERE id = %s",  # noqa: S608 - our table
                    rows[start : start + 1000],
                )
        AuditChainHead.objects.filter(pk=1).update(last_entry_id=last.pk if last else 0, last_hash=prev, count=count)
        newest = checkpoint.Checkpoint(count, last.pk if last else 0, prev)
        transaction.on_commit(functools.partial(checkpoint.write, newest, force=True))
    return before
