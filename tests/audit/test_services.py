"""audit_record_many: a batch of entries costs three statements and keeps the chain intact."""

from __future__ import annotations

import itertools

import pytest
from django.db import transaction

from audit.actors import Actor
from audit.models import AuditChainHead, AuditEntry
from audit.services import audit_record, audit_verify_chain

pytestmark = pytest.mark.django_db


def test_a_batch_of_entries_is_chained_in_order_and_verifies(django_assert_max_num_queries):
    from audit.services import AuditSpec, audit_record_many

    actor = Actor.system("tests")
    with transaction.atomic():
        first = audit_record(actor=actor, action="thing.before", object_type="thing", object_id=0)
    specs = [AuditSpec(actor, "thing.batch", "thing", n, f"thing {n}", {"n": n}) for n in range(50)]
    with transaction.atomic(), django_assert_max_num_queries(5):  # head lock (get_or_create), insert, head update
        entries = audit_record_many(specs)
    assert [e.changes["n"] for e in entries] == list(range(50))
    assert entries[0].prev_hash == first.hash
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(entries))
    stored = list(AuditEntry.objects.filter(action="thing.batch").order_by("id").values_list("hash", flat=True))
    assert stored == [e.hash for e in entries]
    assert AuditChainHead.objects.get(pk=1).last_entry_id == entries[-1].pk
    assert audit_verify_chain().ok


def test_deferred_entries_are_appended_together_at_the_end_and_rolled_back_savepoints_drop_theirs(
    django_assert_max_num_queries,
):
    from audit.services import audit_deferred

    actor = Actor.system("tests")
    with transaction.atomic(), audit_deferred():
        audit_record(actor=actor, action="thing.kept", object_type="thing", object_id=1)
        try:
            with transaction.atomic():
                audit_record(actor=actor, action="thing.undone", object_type="thing", object_id=2)
                raise RuntimeError("the change fails")
        except RuntimeError:
            pass
        audit_record(actor=actor, action="thing.kept", object_type="thing", object_id=3)
        assert not AuditEntry.objects.filter(object_type="thing").exists()  # nothing written yet
    kept = list(AuditEntry.objects.filter(object_type="thing").order_by("id").values_list("action", "object_id"))
    assert kept == [("thing.kept", "1"), ("thing.kept", "3")]
    assert audit_verify_chain().ok


def test_a_failed_deferred_block_writes_nothing():
    from audit.services import audit_deferred

    with pytest.raises(RuntimeError), transaction.atomic(), audit_deferred():
        audit_record(actor=Actor.system("tests"), action="thing.lost", object_type="thing", object_id=1)
        raise RuntimeError("the batch fails")
    assert not AuditEntry.objects.filter(action="thing.lost").exists()
