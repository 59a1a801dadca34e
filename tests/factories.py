"""Factories that build state the way the code does: through the services, audited."""

from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.actors import Actor
from fleet.models import Device, Site
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

    @classmethod
    def _create(cls, model_class: type[Device], **kwargs: Any) -> Device:
        return device_create(actor=TEST_ACTOR, **kwargs)


def make_user(username: str, role: str | None) -> Any:
    user = get_user_model().objects.create_user(username=username, password="not-used-in-tests-1!")
    if role:
        # get_or_create: transactional tests flush the roles that the migration created
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user
