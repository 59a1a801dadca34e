"""Factories that build state the way the code does: through the services, audited."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from audit.actors import Actor
from fleet.models import ConnectionStatus, Device, Site
from fleet.services import device_create, site_create

TEST_ACTOR = Actor.system("tests")


class SiteFactory(factory.Factory):
    class Meta:
        model = Site

    name = factory.Sequence(lambda n: f"Site {n}")
    region = "eu-west"
    latitude = factory.Sequence(lambda n: 40 + (n % 10))
    longitude = factory.Sequence(lambda n: 2 + (n % 10))

    @classmethod
    def _create(cls, model_class: type[Site], **kwargs: Any) -> Site:
        return site_create(actor=TEST_ACTOR, **kwargs)


CONNECTED_BY_DEFAULT = [False]


@contextlib.contextmanager
def connected_devices() -> Iterator[None]:
    """DeviceFactory's devices are online and recently seen unless a test says otherwise."""
    CONNECTED_BY_DEFAULT[0] = True
    try:
        yield
    finally:
        CONNECTED_BY_DEFAULT[0] = False


class DeviceFactory(factory.Factory):
    class Meta:
        model = Device

    uid = factory.Sequence(lambda n: f"dev-{n:05d}")
    name = factory.LazyAttribute(lambda o: f"device {o.uid}")
    site = factory.SubFactory(SiteFactory)
    tier = "edge"
    arch = "aarch64"
    cpu = "Cortex-A72 x4"
    memory_mb = 2048
    accelerator = "none"
    runtimes = factory.LazyFunction(lambda: [{"name": "onnxruntime", "version": "1.18"}])
    tags = factory.LazyFunction(list)
    # never connected, unless `connected=True` (online and heard from now) or the tests run under
    # `connected_devices()` (rollout tests: a rollout prefers reachable devices and defers the others)
    connected = factory.LazyFunction(lambda: CONNECTED_BY_DEFAULT[0])

    @classmethod
    def _create(cls, model_class: type[Device], **kwargs: Any) -> Device:
        connected = kwargs.pop("connected")
        device = device_create(actor=TEST_ACTOR, **kwargs)
        if connected:
            device.status, device.last_seen = ConnectionStatus.ONLINE, timezone.now()
            Device.objects.filter(pk=device.pk).update(status=device.status, last_seen=device.last_seen)
        return device


def side_effects(callbacks: list[Any]) -> list[Any]:
    """The on-commit callbacks a service scheduled, without the audit chain's checkpoint write that every
    audited commit schedules (audit/checkpoint.py)."""
    import functools

    from audit import checkpoint

    return [c for c in callbacks if not (isinstance(c, functools.partial) and c.func is checkpoint.advance)]


def make_token(user: Any, name: str = "tests", days: int | None = None) -> str:
    """A named API token for `user` through the service, as `manage.py token_create` makes it; the clear key."""
    from accounts.services import api_token_create
    from audit.actors import Actor

    return api_token_create(actor=Actor.system("tests"), user=user, name=name, days=days).key


def make_user(username: str, role: str | None) -> Any:
    user = get_user_model().objects.create_user(username=username, password="not-used-in-tests-1!")
    if role:
        # get_or_create: transactional tests flush the roles that the migration created
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user
