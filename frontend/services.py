"""Multi-step actions behind the UI, each all-or-nothing in one transaction: bulk device actions (through
the fleet services, audited there) and the rollout wizard's create-and-start (through the rollout services)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction

from audit.actors import Actor
from deployments.models import Rollout
from deployments.rollout_services import rollout_create, rollout_start
from fleet.models import Device, DeviceGroup
from fleet.services import device_update, group_add_members
from models_registry.models import ModelVersion


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


@transaction.atomic
def rollout_create_and_start(*, actor: Actor, version: ModelVersion, plan: dict[str, Any], name: str = "") -> Rollout:
    """The wizard's last step: create the rollout and start it, all or nothing (a refused start leaves no
    draft behind). Both steps are audited by the rollout services."""
    rollout = rollout_create(actor=actor, version=version, plan=plan, name=name)
    return rollout_start(actor=actor, rollout=rollout)
