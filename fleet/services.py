"""Every audited write to the inventory. Views, the admin, tasks and the bridge call these."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import AuditSpec, audit_record, audit_record_many, diff, snapshot
from broker.passwords import generate_secret, hash_secret
from core.resolve_cache import resolve_cache_invalidate
from fleet.inference_trust import inference_url_refusal
from outbox.models import RejectedMessageCount
from protocol.streams import DEVICE_STATUS_EVENT, FLEET_GROUP

from . import storms
from .exceptions import DeviceRevoked
from .models import ConnectionStatus, Device, DeviceGroup, DeviceRuntime, DeviceTag, GroupKind, Site

logger = logging.getLogger(__name__)
UNTRUSTED_INFERENCE_URL = "untrusted_inference_url"  # the count's reason in GET /healthz, `bridge.rejected`

SITE_FIELDS = ("name", "region", "latitude", "longitude")
DEVICE_FIELDS = (
    "uid",
    "name",
    "site",
    "tier",
    "parent",
    "arch",
    "cpu",
    "memory_mb",
    "accelerator",
    "agent_version",
    "inference_host",
    "job_dialect",
)
GROUP_FIELDS = ("name", "description", "kind", "filter")


# --- sites ----------------------------------------------------------------------------------------
@transaction.atomic
def site_create(*, actor: Actor, name: str, latitude: float, longitude: float, region: str = "") -> Site:
    site = Site.objects.create(name=name, region=region, latitude=latitude, longitude=longitude)
    audit_record(
        actor=actor,
        action="site.create",
        object_type="site",
        object_id=site.pk,
        object_repr=site.name,
        changes=diff({}, snapshot(site, SITE_FIELDS)),
    )
    return site


@transaction.atomic
def site_update(*, actor: Actor, site: Site, **fields: Any) -> Site:
    before = snapshot(site, SITE_FIELDS)
    for key, value in fields.items():
        setattr(site, key, value)
    site.save()
    changes = diff(before, snapshot(site, SITE_FIELDS))
    if changes:
        resolve_cache_invalidate()
        audit_record(
            actor=actor,
            action="site.update",
            object_type="site",
            object_id=site.pk,
            object_repr=site.name,
            changes=changes,
        )
    return site


@transaction.atomic
def site_delete(*, actor: Actor, site: Site) -> None:
    """Deletes an empty site (devices keep their site: PROTECT raises for a site in use)."""
    before = snapshot(site, SITE_FIELDS)
    pk, name = site.pk, site.name
    site.delete()
    audit_record(
        actor=actor,
        action="site.delete",
        object_type="site",
        object_id=pk,
        object_repr=name,
        changes=diff(before, {}),
    )


# --- devices --------------------------------------------------------------------------------------
def _device_state(device: Device) -> dict[str, Any]:
    state = snapshot(device, DEVICE_FIELDS)
    state["runtimes"] = sorted(f"{r.name} {r.version}" for r in device.runtimes.all())
    state["tags"] = sorted(t.tag for t in device.tag_links.all())
    return state


def _replace_runtimes(device: Device, runtimes: Sequence[dict[str, str]]) -> None:
    DeviceRuntime.objects.filter(device=device).delete()
    DeviceRuntime.objects.bulk_create(
        [DeviceRuntime(device=device, name=r["name"], version=r["version"]) for r in runtimes]
    )


def _replace_tags(device: Device, tags: Iterable[str]) -> None:
    DeviceTag.objects.filter(device=device).delete()
    DeviceTag.objects.bulk_create([DeviceTag(device=device, tag=tag) for tag in sorted(set(tags))])


@transaction.atomic
def device_create(
    *,
    actor: Actor,
    runtimes: Sequence[dict[str, str]] = (),
    tags: Iterable[str] = (),
    **fields: Any,
) -> Device:
    """Create a device with its runtimes and tags. It has no credentials until they are issued."""
    device = Device(**fields)
    device.full_clean(exclude=["credential_hash"])
    device.save()
    _replace_runtimes(device, runtimes)
    _replace_tags(device, tags)
    audit_record(
        actor=actor,
        action="device.create",
        object_type="device",
        object_id=device.pk,
        object_repr=device.uid,
        changes=diff({}, _device_state(device)),
    )
    return device


@transaction.atomic
def device_update(
    *,
    actor: Actor,
    device: Device,
    runtimes: Sequence[dict[str, str]] | None = None,
    tags: Iterable[str] | None = None,
    **fields: Any,
) -> Device:
    before = _device_state(device)
    for key, value in fields.items():
        setattr(device, key, value)
    device.full_clean(exclude=["credential_hash"])
    device.save()
    if runtimes is not None:
        _replace_runtimes(device, runtimes)
    if tags is not None:
        _replace_tags(device, tags)
    # re-read relations so the audit sees what is stored, not a stale prefetch
    device = Device.objects.with_inventory().get(pk=device.pk)
    changes = diff(before, _device_state(device))
    if changes:
        resolve_cache_invalidate()
        audit_record(
            actor=actor,
            action="device.update",
            object_type="device",
            object_id=device.pk,
            object_repr=device.uid,
            changes=changes,
        )
    return device


@transaction.atomic
def device_delete(*, actor: Actor, device: Device) -> None:
    before = _device_state(device)
    pk, uid = device.pk, device.uid
    device.delete()
    resolve_cache_invalidate()
    audit_record(
        actor=actor,
        action="device.delete",
        object_type="device",
        object_id=pk,
        object_repr=uid,
        changes=diff(before, {}),
    )


@dataclass(frozen=True)
class IssuedCredentials:
    device: Device
    username: str
    secret: str
    rotated: bool


@transaction.atomic
def device_issue_credentials(*, actor: Actor, device: Device) -> IssuedCredentials:
    """Issue (or rotate) the device's MQTT secret. Only its hash is stored; the secret is returned once.

    Rotation invalidates the previous secret at once. Issuing lifts a revocation: re-provisioning a
    revoked device is an admin's explicit decision and is audited as such.
    """
    device = Device.objects.select_for_update().get(pk=device.pk)
    rotated = bool(device.credential_hash)
    was_revoked = device.is_revoked
    secret = generate_secret()
    device.credential_hash = hash_secret(secret)
    device.credential_issued_at = timezone.now()
    device.revoked_at = None
    device.save(update_fields=["credential_hash", "credential_issued_at", "revoked_at", "updated_at"])
    audit_record(
        actor=actor,
        action="device.credentials_rotate" if rotated else "device.credentials_issue",
        object_type="device",
        object_id=device.pk,
        object_repr=device.uid,
        changes={
            "credential_issued_at": {"before": None, "after": device.credential_issued_at},
            **({"revoked": {"before": True, "after": False}} if was_revoked else {}),
        },
    )
    return IssuedCredentials(device=device, username=device.uid, secret=secret, rotated=rotated)


@transaction.atomic
def device_revoke(*, actor: Actor, device: Device, reason: str = "") -> Device:
    """Revoke the device's credentials: the broker and the bridge refuse it from now on. Idempotent."""
    device = Device.objects.select_for_update().get(pk=device.pk)
    if device.is_revoked:
        return device
    device.revoked_at = timezone.now()
    device.credential_hash = ""
    device.status = ConnectionStatus.OFFLINE
    device.save(update_fields=["revoked_at", "credential_hash", "status", "updated_at"])
    resolve_cache_invalidate()
    audit_record(
        actor=actor,
        action="device.revoke",
        object_type="device",
        object_id=device.pk,
        object_repr=device.uid,
        changes={"revoked": {"before": False, "after": True}, "reason": reason},
    )
    return device


def device_credential_hash(uid: str) -> str | None:
    """The stored hash for a device that may connect (None for unknown or revoked devices)."""
    row = Device.objects.filter(uid=uid, revoked_at__isnull=True).values_list("credential_hash", flat=True).first()
    return row or None


def device_mark_seen(*, actor: Actor, uid: str, online: bool, at: dt.datetime | None = None) -> Device:
    """Record a device's heartbeat or status message. Only a change of online state is audited."""
    with transaction.atomic():
        refused = devices_mark_seen_many(reports=[(uid, online)], actor_of=lambda _: actor, at=at)
        if refused.get(uid) == "revoked_device":
            raise DeviceRevoked(uid)
        return Device.objects.get(uid=uid)


def devices_mark_seen_many(
    *,
    reports: Sequence[tuple[str, bool]],
    actor_of: Callable[[str], Actor] = Actor.device,
    at: dt.datetime | None = None,
) -> dict[str, str]:
    """Record many status messages (uid, online?) in one transaction, in order (the MQTT bridge's batch).

    Only changes of online state are audited, by `actor_of(uid)` (the device itself), in one insert; the
    fleet page gets them in one pass after commit and the resolve cache is bumped once. Rows are locked in
    id order, so two bridges never deadlock. Returns {uid: "unknown_device" | "revoked_device"} for the
    reports that were refused; the others are applied.
    """
    if not reports:
        return {}
    now = at or timezone.now()
    refused: dict[str, str] = {}
    with transaction.atomic():
        devices = {
            d.uid: d
            for d in Device.objects.select_for_update(no_key=True)  # a job insert (its FK) need not wait
            .filter(uid__in={uid for uid, _ in reports})
            .order_by("pk")
            .only("pk", "uid", "status", "revoked_at")
        }
        changes: list[tuple[Device, str, str]] = []
        seen: dict[str, Device] = {}
        for uid, online in reports:
            device = devices.get(uid)
            if device is None or device.is_revoked:
                refused[uid] = "unknown_device" if device is None else "revoked_device"
                continue
            new_status = ConnectionStatus.ONLINE if online else ConnectionStatus.OFFLINE
            if device.status != new_status:
                changes.append((device, device.status, new_status))
                device.status = new_status
            seen[uid] = device
        for status in (ConnectionStatus.ONLINE, ConnectionStatus.OFFLINE):
            pks = [d.pk for d in seen.values() if d.status == status]
            if pks:
                Device.objects.filter(pk__in=pks).update(status=status, last_seen=now, updated_at=now)
        if changes:
            audit_record_many(
                [
                    AuditSpec(
                        actor_of(d.uid),
                        f"device.{after}",
                        "device",
                        d.pk,
                        d.uid,
                        {"status": {"before": before, "after": after}},
                    )
                    for d, before, after in changes
                ]
            )
            payloads = [
                {"id": d.pk, "uid": d.uid, "status": after, "last_seen": now.isoformat()} for d, _, after in changes
            ]
            transaction.on_commit(lambda: _broadcast_device_statuses(payloads))
            resolve_cache_invalidate()
            went_offline = sum(1 for _, _, after in changes if after == ConnectionStatus.OFFLINE)
            if went_offline:
                storms.offline_storm_observe(count=went_offline)
    return refused


def _broadcast_device_statuses(payloads: list[dict[str, Any]]) -> None:
    """The fleet page's online/offline events, in one pass; nothing when no fleet page is open."""
    from core.stream_watchers import stream_watched_groups

    layer = get_channel_layer()
    if layer is None or FLEET_GROUP not in stream_watched_groups():
        return

    async def send_all() -> None:
        for payload in payloads:
            await layer.group_send(FLEET_GROUP, {"type": DEVICE_STATUS_EVENT, "payload": payload})

    async_to_sync(send_all)()


def device_report_state(*, actor: Actor, uid: str, state: dict[str, Any], agent_version: str) -> Device:
    """Store what the agent reports (hardware, runtimes, slots, active models).

    Reported state arrives on every reconnect; only a change of the active models is audited, since
    that is what answers "which version ran on which device, from when".
    """
    with transaction.atomic():
        refused = devices_report_state_many(reports=[(uid, state, agent_version)], actor_of=lambda _: actor)
        if refused.get(uid) == "revoked_device":
            raise DeviceRevoked(uid)
        return Device.objects.get(uid=uid)


def devices_report_state_many(
    *, reports: Sequence[tuple[str, dict[str, Any], str]], actor_of: Callable[[str], Actor] = Actor.device
) -> dict[str, str]:
    """`device_report_state` for many (uid, state, agent version) in one transaction, in order (the MQTT
    bridge's batch): rows locked once in id order, written in one UPDATE, changes of active models
    audited by `actor_of(uid)` in one insert, the resolve cache bumped once. Returns
    {uid: "unknown_device" | "revoked_device"} for the reports refused.

    A newly reported `inference_url` whose host the control plane does not trust for that device
    (fleet/inference_trust.py) is stored as reported but never served by resolve; it is logged and counted
    as `untrusted_inference_url`."""
    if not reports:
        return {}
    refused: dict[str, str] = {}
    with transaction.atomic():
        devices = {
            d.uid: d
            for d in Device.objects.select_for_update(no_key=True)  # a job insert (its FK) need not wait
            .filter(uid__in={uid for uid, _, _ in reports})
            .order_by("pk")
            .only("pk", "uid", "revoked_at", "reported_state", "inference_url", "inference_host")
        }
        now = timezone.now()
        audits: list[AuditSpec] = []
        changed_endpoints = False
        written: dict[str, Device] = {}
        untrusted: list[tuple[str, str]] = []
        for uid, state, agent_version in reports:
            device = devices.get(uid)
            if device is None or device.is_revoked:
                refused[uid] = "unknown_device" if device is None else "revoked_device"
                continue
            before_active = (device.reported_state or {}).get("active", {})
            before_url = device.inference_url
            device.reported_state = state
            device.reported_at = device.last_seen = device.updated_at = now
            device.agent_version = agent_version[:40]
            device.inference_url = state.get("inference_url") or ""
            if device.inference_url != before_url:
                refusal = inference_url_refusal(uid=uid, url=device.inference_url, inference_host=device.inference_host)
                if refusal is not None:
                    untrusted.append((uid, refusal))
            after_active = state.get("active", {})
            changed_endpoints |= before_active != after_active or before_url != device.inference_url
            if before_active != after_active:
                audits.append(
                    AuditSpec(
                        actor_of(uid),
                        "device.active_models_changed",
                        "device",
                        device.pk,
                        device.uid,
                        {"active": {"before": before_active, "after": after_active}},
                    )
                )
            written[uid] = device
        _write_reported_states(list(written.values()))
        audit_record_many(audits)
        _count_untrusted_urls(untrusted)
        if changed_endpoints:
            resolve_cache_invalidate()
    return refused


_STATE_COLUMNS = ("reported_state", "reported_at", "last_seen", "agent_version", "inference_url", "updated_at")


def _write_reported_states(devices: list[Device]) -> None:
    """One UPDATE for the reported states: on PostgreSQL `UPDATE … FROM (VALUES …)` with the rows' values as
    parameters; elsewhere `bulk_update`, whose CASE per row and column took a fifth of the bridge's time
    in a 10,000-device wave (its expressions are built and resolved in Python)."""
    if not devices:
        return
    if connection.vendor != "postgresql":
        Device.objects.bulk_update(devices, list(_STATE_COLUMNS))
        return
    table = connection.ops.quote_name(Device._meta.db_table)
    row = "(%s::bigint, %s::jsonb, %s::timestamptz, %s::timestamptz, %s::text, %s::text, %s::timestamptz)"
    params: list[object] = []
    for device in devices:
        params += [device.pk, json.dumps(device.reported_state), device.reported_at, device.last_seen,
                   device.agent_version, device.inference_url, device.updated_at]  # fmt: skip
    assignments = ", ".join(f"{column} = v.{column}" for column in _STATE_COLUMNS)
    sql = (
        f"UPDATE {table} AS d SET {assignments} FROM (VALUES {', '.join([row] * len(devices))}) "  # noqa: S608 - identifiers are ours
        f"AS v(id, {', '.join(_STATE_COLUMNS)}) WHERE d.id = v.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _count_untrusted_urls(untrusted: list[tuple[str, str]]) -> None:
    if not untrusted:
        return
    from django.db.models import F

    for uid, reason in untrusted:
        logger.warning("device %s advertises an inference URL resolve will not serve: %s", uid, reason)
    uid, reason = untrusted[-1]
    detail, topic = reason[:500], f"fogdeck/v1/devices/{uid}/state"[:300]
    counted = RejectedMessageCount.objects.filter(reason=UNTRUSTED_INFERENCE_URL).update(
        count=F("count") + len(untrusted), last_detail=detail, last_topic=topic
    )
    if not counted:
        RejectedMessageCount.objects.create(
            reason=UNTRUSTED_INFERENCE_URL, count=len(untrusted), last_detail=detail, last_topic=topic
        )


def devices_lock(*, uids: Iterable[str]) -> None:
    """Lock these devices' rows, in one statement in id order, inside the caller's transaction: a batch
    that touches a device through several services (its job updates lock the job and the device, its
    status and state lock the device) takes its locks in one order, so two bridges given parts of the
    same devices' messages (shared subscriptions) wait for each other instead of deadlocking (36 batches
    of a 10,000-device fan-out failed as deadlocks and were applied again, each after PostgreSQL's 1 s)."""
    wanted = sorted(set(uids))
    if wanted and connection.features.has_select_for_update:
        list(Device.objects.select_for_update(no_key=True).filter(uid__in=wanted).order_by("pk").values_list("pk"))


def devices_touch(uids: Iterable[str], *, at: dt.datetime | None = None) -> int:
    """Refresh last_seen for devices that just sent something (batched; a heartbeat is not audited)."""
    return Device.objects.filter(uid__in=list(uids), revoked_at__isnull=True).update(last_seen=at or timezone.now())


@transaction.atomic
def devices_mark_stale_offline(*, actor: Actor, now: dt.datetime | None = None) -> list[str]:
    """Mark devices offline whose heartbeat is older than DEVICE_STALE_AFTER_SECONDS (a missed Last Will)."""
    stale = list(Device.objects.stale(now).select_for_update(skip_locked=True).values_list("pk", "uid"))
    if not stale:
        return []
    Device.objects.filter(pk__in=[pk for pk, _ in stale]).update(status=ConnectionStatus.OFFLINE)
    uids = [uid for _, uid in stale]
    resolve_cache_invalidate()
    storms.offline_storm_observe(count=len(uids))
    audit_record(
        actor=actor,
        action="device.mark_stale_offline",
        object_type="device",
        object_id="",
        object_repr=f"{len(uids)} devices",
        changes={"devices": uids},
    )
    return uids


# --- groups ---------------------------------------------------------------------------------------
@transaction.atomic
def group_create(
    *,
    actor: Actor,
    name: str,
    kind: str = GroupKind.STATIC,
    description: str = "",
    filter: dict[str, Any] | None = None,
    devices: Iterable[Device] = (),
) -> DeviceGroup:
    group = DeviceGroup.objects.create(name=name, kind=kind, description=description, filter=filter or {})
    members = list(devices)
    if members:
        group.devices.add(*members)
    audit_record(
        actor=actor,
        action="group.create",
        object_type="group",
        object_id=group.pk,
        object_repr=group.name,
        changes={
            **diff({}, snapshot(group, GROUP_FIELDS)),
            **({"added": [d.uid for d in members]} if members else {}),
        },
    )
    return group


@transaction.atomic
def group_update(*, actor: Actor, group: DeviceGroup, **fields: Any) -> DeviceGroup:
    before = snapshot(group, GROUP_FIELDS)
    for key, value in fields.items():
        setattr(group, key, value)
    group.save()
    if group.is_dynamic:
        group.devices.clear()
    changes = diff(before, snapshot(group, GROUP_FIELDS))
    if changes:
        audit_record(
            actor=actor,
            action="group.update",
            object_type="group",
            object_id=group.pk,
            object_repr=group.name,
            changes=changes,
        )
    return group


@transaction.atomic
def group_delete(*, actor: Actor, group: DeviceGroup) -> None:
    before = snapshot(group, GROUP_FIELDS)
    pk, name = group.pk, group.name
    group.delete()
    audit_record(
        actor=actor,
        action="group.delete",
        object_type="group",
        object_id=pk,
        object_repr=name,
        changes=diff(before, {}),
    )


class DynamicGroupMembership(Exception):
    """Members of a dynamic group come from its filter; they cannot be added or removed by hand."""


@transaction.atomic
@transaction.atomic
def devices_add_tag(*, actor: Actor, devices: Sequence[Device], tag: str) -> list[str]:
    """Add `tag` to every device that lacks it, all or nothing (one audited `device.update` each); returns
    their uids. The UI's bulk action."""
    changed = []
    for device in devices:
        tags = device.tag_list
        if tag not in tags:
            device_update(actor=actor, device=device, tags=[*tags, tag])
            changed.append(device.uid)
    return changed


def group_add_members(*, actor: Actor, group: DeviceGroup, devices: Sequence[Device]) -> list[str]:
    if group.is_dynamic:
        raise DynamicGroupMembership(group.name)
    existing = set(group.devices.filter(pk__in=[d.pk for d in devices]).values_list("pk", flat=True))
    new = [d for d in devices if d.pk not in existing]
    if new:
        group.devices.add(*new)
        audit_record(
            actor=actor,
            action="group.add_members",
            object_type="group",
            object_id=group.pk,
            object_repr=group.name,
            changes={"added": sorted(d.uid for d in new)},
        )
    return [d.uid for d in new]


@transaction.atomic
def group_remove_members(*, actor: Actor, group: DeviceGroup, devices: Sequence[Device]) -> list[str]:
    if group.is_dynamic:
        raise DynamicGroupMembership(group.name)
    present = list(group.devices.filter(pk__in=[d.pk for d in devices]))
    if present:
        group.devices.remove(*present)
        audit_record(
            actor=actor,
            action="group.remove_members",
            object_type="group",
            object_id=group.pk,
            object_repr=group.name,
            changes={"removed": sorted(d.uid for d in present)},
        )
    return [d.uid for d in present]
