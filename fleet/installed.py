"""The device API's `installed` field: the model (and pipeline) versions running on a device now.

Installations are deployments' rows, a layer above fleet: fleet declares the field (its shape is
fleet.api.serializers.InstalledSerializer) and reads it through the provider that deployments sets in
its AppConfig.ready() (deployments/selectors.py). Without one, as in fleet alone, every list is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from .models import Device

InstalledRow = dict[str, Any]  # {"model": name, "version": number, "since": datetime}


@dataclass(frozen=True)
class InstalledProvider:
    # `devices` loading their current installations with them (the detail view: one query, not one each)
    with_current: Callable[[QuerySet[Device]], QuerySet[Device]]
    # one device's list (from what `with_current` loaded, else its own query)
    of_device: Callable[[Device], list[InstalledRow]]
    # the lists of a page of devices, in one query (the device list's plain rows), by device id
    of_devices: Callable[[list[int]], dict[int, list[InstalledRow]]]


NOTHING_INSTALLED = InstalledProvider(
    with_current=lambda devices: devices, of_device=lambda device: [], of_devices=lambda ids: {}
)
_provider = NOTHING_INSTALLED


def installed_provider_set(provider: InstalledProvider) -> None:
    global _provider
    _provider = provider


def installed_provider() -> InstalledProvider:
    return _provider
