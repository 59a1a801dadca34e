"""Credentials for the demo's simulated fleet, kept in a local file so the simulator can log in as each device."""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.core.files.storage import default_storage

from audit.actors import Actor
from broker.passwords import verify_secret
from deployments.models import Installation
from fleet.models import Device
from fleet.services import device_issue_credentials
from models_registry.models import ModelVersion

PROFILE_TAG = "profile:"


def _local_artifact(version: ModelVersion, directory: Path) -> Path:
    """A copy of the version's artifact on this machine, for the simulator to load as a factory image."""
    path = directory / f"{version.sha256}.{version.format}"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with default_storage.open(version.artifact_key, "rb") as source:
            path.write_bytes(source.read())
    return path


def demo_device_specs(path: Path, *, actor: Actor) -> list[dict[str, object]]:
    """`[{uid, secret, profile, site?, preinstalled?}]` for every seeded device; secrets are reused while valid.

    `preinstalled` is the model version the device runs now (its current Installation), with a local copy
    of the artifact next to the file, so a restarted simulator comes back running what its device ran.
    The file is the demo's only copy of the secrets (the database keeps hashes), written 0600.
    """
    known: dict[str, str] = {}
    if path.exists():
        known = {row["uid"]: row["secret"] for row in json.loads(path.read_text())}
    current = {
        i.device_id: i.version
        for i in Installation.objects.filter(until__isnull=True, version__isnull=False).select_related("version__model")
    }
    artifacts = path.parent / "demo-artifacts"
    specs: list[dict[str, object]] = []
    for device in Device.objects.active().select_related("site").prefetch_related("tag_links").order_by("uid"):
        profile = next((t[len(PROFILE_TAG) :] for t in device.tag_list if t.startswith(PROFILE_TAG)), "")
        if not profile:
            continue  # not a seeded demo device
        secret = known.get(device.uid, "")
        if not (secret and device.credential_hash and verify_secret(secret, device.credential_hash)):
            secret = device_issue_credentials(actor=actor, device=device).secret
        row: dict[str, object] = {"uid": device.uid, "secret": secret, "profile": profile}
        if device.site is not None:
            row["site"] = device.site.name  # the simulator's --drift-site picks devices by it
        if (version := current.get(device.pk)) is not None:
            row["preinstalled"] = {
                "model": version.model.name, "version": version.number, "sha256": version.sha256,
                "path": str(_local_artifact(version, artifacts)),
            }  # fmt: skip
        specs.append(row)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(specs, handle)
    return specs
