"""A believable demo fleet: cloud data centres, factories and stores with fog gateways and edge boards.

Deterministic (seeded), so `seed_demo` is idempotent and every demo shows the same fleet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    tier: str
    arch: str
    cpu: str
    memory_choices: tuple[int, ...]
    accelerator: str
    runtimes: tuple[tuple[str, str], ...]
    tags: tuple[str, ...] = ()


PROFILES = {
    p.name: p
    for p in (
        HardwareProfile(
            "gpu-server",
            "cloud",
            "x86_64",
            "Xeon Gold 6338 x32",
            (131072,),
            "gpu",
            (("onnxruntime", "1.18"), ("tensorrt", "8.6"), ("openvino", "2024.1")),
        ),
        HardwareProfile(
            "cpu-server",
            "cloud",
            "x86_64",
            "EPYC 7543 x16",
            (65536,),
            "none",
            (("onnxruntime", "1.18"), ("openvino", "2024.1")),
        ),
        HardwareProfile(
            "atom-gateway",
            "fog",
            "x86_64",
            "Atom x6425E x4",
            (4096, 8192),
            "none",
            (("onnxruntime", "1.17"), ("openvino", "2024.1")),
        ),
        HardwareProfile(
            "jetson-orin",
            "fog",
            "aarch64",
            "Cortex-A78AE x8",
            (16384, 32768),
            "gpu",
            (("onnxruntime", "1.18"), ("tensorrt", "8.6")),
        ),
        HardwareProfile("lte-gateway", "fog", "armv7l", "Cortex-A7 x2", (512,), "none", (("tflite", "2.11"),)),
        HardwareProfile(
            "rpi4",
            "edge",
            "aarch64",
            "Cortex-A72 x4",
            (1024, 2048, 4096, 8192),
            "none",
            (("onnxruntime", "1.18"), ("tflite", "2.14")),
        ),
        HardwareProfile(
            "rpi3",
            "edge",
            "armv7l",
            "Cortex-A53 x4",
            (1024,),
            "none",
            (("onnxruntime", "1.14"), ("tflite", "2.12")),
        ),
        HardwareProfile(
            "jetson-nano",
            "edge",
            "aarch64",
            "Cortex-A57 x4",
            (4096,),
            "gpu",
            (("onnxruntime", "1.16"), ("tensorrt", "8.2")),
        ),
        HardwareProfile("coral-dev", "edge", "aarch64", "Cortex-A53 x4", (1024, 4096), "tpu", (("tflite", "2.14"),)),
        HardwareProfile(
            "atom-box",
            "edge",
            "x86_64",
            "Atom x5-E3940 x4",
            (4096, 8192),
            "none",
            (("onnxruntime", "1.17"), ("openvino", "2023.3")),
        ),
    )
}


@dataclass(frozen=True)
class DemoSite:
    slug: str
    name: str
    region: str
    latitude: float
    longitude: float
    kind: str  # datacenter | plant | store | port
    gateways: tuple[str, ...] = ()
    edge_mix: tuple[tuple[str, int], ...] = ()  # profile, weight
    tags: tuple[str, ...] = field(default=())


SITES = (
    DemoSite("fra", "Frankfurt DC", "eu-central", 50.1109, 8.6821, "datacenter"),
    DemoSite("ohio", "Columbus DC", "us-east", 39.9612, -82.9988, "datacenter"),
    DemoSite(
        "lyon",
        "Lyon Plant",
        "eu-west",
        45.764,
        4.8357,
        "plant",
        ("atom-gateway", "jetson-orin", "atom-gateway"),
        (("rpi4", 5), ("jetson-nano", 2), ("atom-box", 2), ("rpi3", 1)),
        ("vision", "line-qc"),
    ),
    DemoSite(
        "rtm",
        "Rotterdam Port",
        "eu-west",
        51.9244,
        4.4777,
        "port",
        ("atom-gateway", "lte-gateway"),
        (("rpi4", 4), ("coral-dev", 3), ("rpi3", 2)),
        ("cranes", "vibration"),
    ),
    DemoSite(
        "aus",
        "Austin Store 114",
        "us-south",
        30.2672,
        -97.7431,
        "store",
        ("atom-gateway",),
        (("rpi4", 6), ("coral-dev", 2)),
        ("shelf-cam", "pos"),
    ),
    DemoSite(
        "osa",
        "Osaka Warehouse",
        "ap-northeast",
        34.6937,
        135.5023,
        "plant",
        ("jetson-orin", "atom-gateway"),
        (("jetson-nano", 3), ("rpi4", 4), ("atom-box", 2)),
        ("picking", "vision"),
    ),
)

CLOUD_PROFILES = (("gpu-server", 1), ("cpu-server", 2))


@dataclass(frozen=True)
class DemoDevice:
    uid: str
    name: str
    site: str
    profile: HardwareProfile
    memory_mb: int
    parent_uid: str | None
    tags: tuple[str, ...]


def _pick(rng: random.Random, mix: tuple[tuple[str, int], ...]) -> str:
    names, weights = zip(*mix, strict=True)
    return rng.choices(names, weights=weights)[0]


def demo_devices(total: int, seed: int = 42) -> list[DemoDevice]:
    """`total` devices (at least one per site and gateway), spread over sites and tiers deterministically."""
    rng = random.Random(seed)
    devices: list[DemoDevice] = []
    edge_sites = [s for s in SITES if s.kind != "datacenter"]
    # cloud: about 4 % of the fleet, at least two per data centre
    per_dc = max(2, total // 25 // 2)
    for site in (s for s in SITES if s.kind == "datacenter"):
        for i in range(1, per_dc + 1):
            profile = PROFILES[_pick(rng, CLOUD_PROFILES)]
            devices.append(
                DemoDevice(
                    f"{site.slug}-node-{i:02d}",
                    f"{site.name} node {i}",
                    site.name,
                    profile,
                    rng.choice(profile.memory_choices),
                    None,
                    ("datacenter",),
                )
            )
    gateways: dict[str, list[DemoDevice]] = {}
    for site in edge_sites:
        for i, profile_name in enumerate(site.gateways, start=1):
            profile = PROFILES[profile_name]
            gw = DemoDevice(
                f"{site.slug}-gw-{i:02d}",
                f"{site.name} gateway {i}",
                site.name,
                profile,
                rng.choice(profile.memory_choices),
                None,
                ("gateway", *site.tags[:1]),
            )
            devices.append(gw)
            gateways.setdefault(site.name, []).append(gw)
    remaining = max(0, total - len(devices))
    counters: dict[str, int] = {}
    for n in range(remaining):
        site = edge_sites[n % len(edge_sites)]
        profile = PROFILES[_pick(rng, site.edge_mix)]
        # 512 MB LTE gateways only carry the small boards
        candidates = [g for g in gateways[site.name] if g.profile.memory_choices[0] > 512 or profile.name == "rpi3"]
        parent = rng.choice(candidates or gateways[site.name])
        counters[site.slug] = counters.get(site.slug, 0) + 1
        k = counters[site.slug]
        tags = tuple(sorted({rng.choice(site.tags), f"line-{rng.randint(1, 4)}"}))
        devices.append(
            DemoDevice(
                f"{site.slug}-{profile.name}-{k:04d}",
                f"{profile.name} {k} at {site.name}",
                site.name,
                profile,
                rng.choice(profile.memory_choices),
                parent.uid,
                tags,
            )
        )
    return devices
