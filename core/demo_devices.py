"""Credentials for the demo's simulated fleet, kept in a local file so the simulator can log in as each device."""

from __future__ import annotations

import json
import os
from pathlib import Path

from audit.actors import Actor
from broker.passwords import verify_secret
from fleet.models import Device
from fleet.services import device_issue_credentials

PROFILE_TAG = "profile:"


def demo_device_specs(path: Path, *, actor: Actor) -> list[dict[str, str]]:
    """`[{uid, secret, profile}]` for every seeded device; secrets are reused while they still verify.

    The file is the demo's only copy of the secrets (the database keeps hashes), written 0600.
    """
    known: dict[str, str] = {}
    if path.exists():
        known = {row["uid"]: row["secret"] for row in json.loads(path.read_text())}
    specs = []
    for device in Device.objects.active().prefetch_related("tag_links").order_by("uid"):
        profile = next((t[len(PROFILE_TAG) :] for t in device.tag_list if t.startswith(PROFILE_TAG)), "")
        if not profile:
            continue  # not a seeded demo device
        secret = known.get(device.uid, "")
        if not (secret and device.credential_hash and verify_secret(secret, device.credential_hash)):
            secret = device_issue_credentials(actor=actor, device=device).secret
        specs.append({"uid": device.uid, "secret": secret, "profile": profile})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(specs, handle)
    return specs
