from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.actors import Actor
from fleet.demo_fleet import SITES, demo_devices
from fleet.models import Device, Site
from fleet.services import device_create, site_create

ACTOR = Actor.system("seed_demo")


class Command(BaseCommand):
    help = (
        "Seed a believable demo fleet (sites, fog gateways, edge devices behind them). Idempotent. "
        "Devices start offline: presence comes from devices (the demo's simulated fleet) over MQTT."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--devices", type=int, default=240, help="fleet size (default 240)")
        parser.add_argument("--seed", type=int, default=42)

    def handle(self, *args: Any, devices: int, seed: int, **options: Any) -> None:
        sites = {s.name: s for s in Site.objects.all()}
        for demo in SITES:
            if demo.name not in sites:
                sites[demo.name] = site_create(
                    actor=ACTOR,
                    name=demo.name,
                    region=demo.region,
                    latitude=demo.latitude,
                    longitude=demo.longitude,
                )
        plan = demo_devices(devices, seed)
        existing = set(Device.objects.filter(uid__in=[d.uid for d in plan]).values_list("uid", flat=True))
        missing = [d for d in plan if d.uid not in existing]
        ids = dict(Device.objects.filter(uid__in=[d.uid for d in plan]).values_list("uid", "pk"))
        for index, demo in enumerate(missing, start=1):
            device = device_create(
                actor=ACTOR,
                uid=demo.uid,
                name=demo.name,
                site=sites[demo.site],
                tier=demo.profile.tier,
                parent_id=ids.get(demo.parent_uid) if demo.parent_uid else None,
                arch=demo.profile.arch,
                cpu=demo.profile.cpu,
                memory_mb=demo.memory_mb,
                accelerator=demo.profile.accelerator,
                runtimes=[{"name": n, "version": v} for n, v in demo.profile.runtimes],
                tags=[*demo.tags, f"profile:{demo.profile.name}"],
            )
            ids[demo.uid] = device.pk
            if index % 50 == 0 or index == len(missing):
                self.stdout.write(f"  devices {index}/{len(missing)}", ending="\r")
        if missing:
            self.stdout.write("")
        self.stdout.write(
            self.style.SUCCESS(f"demo fleet: {len(SITES)} sites, {Device.objects.count()} devices ({len(missing)} new)")
        )
