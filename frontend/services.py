"""Bulk device actions behind the device list. Each one goes through the fleet services (audited there)
in a single transaction, so a bulk action is all-or-nothing."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from audit.actors import Actor
from fleet.models import Device, DeviceGroup
from fleet.services import device_update, group_add_members


@transaction.atomic
def devices_add_tag(*, actor: Actor, devices: Sequence[Device], tag: str) -> list[str]:
    """Add `tag` to every device that lacks it (one audited `device.update` each); returns their uids."""
    changed = []
    for device in devices:
        tags = device.tag_list
        if tag not in tags:
            device_update(actor=actor, device=device, tags=[*tags, tag])
            changed.append(device.uid)
    return changed


def devices_add_to_group(*, actor: Actor, devices: Sequence[Device], group: DeviceGroup) -> list[str]:
    """Add the devices to a static group (one audited `group.add_members`); returns the uids added."""
    return group_add_members(actor=actor, group=group, devices=devices)
