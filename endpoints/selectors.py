"""Nearest-endpoint resolution: which healthy devices serve `model@alias`, nearest first.

Order (see docs/architecture.md, "Nearest-endpoint resolution"):
  0. devices at the caller's site (any tier), fastest recent p95 first;
  1. fog gateways: the parents of devices at the caller's site, and fog-tier devices within
     ENDPOINTS_FOG_RADIUS_KM of it, nearest first;
  2. cloud nodes, nearest first.
Edge devices at other sites and distant fog gateways are not offered: they serve their own site.

Only devices Fogdeck installed the version on count: a current `Installation` (from a succeeded job) of
exactly that version. What a device reports can only narrow that (its reported active version must
agree), never widen it, and its advertised URL is served only when the control plane trusts its host
(fleet/inference_trust.py): a compromised device cannot claim a model it was not given, nor send callers
elsewhere.

Left out: revoked, offline, stale (silent longer than DEVICE_STALE_AFTER_SECONDS), not advertising an
inference URL or advertising an untrusted one, or failing health (error rate over the last
ENDPOINTS_HEALTH_WINDOW_SECONDS above ENDPOINTS_MAX_ERROR_RATE_PERMILLE, from raw telemetry of that model version).

`endpoints_resolve_cached` files answers under the generation counter of `core.resolve_cache`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import asdict, dataclass

from django.conf import settings
from django.core.cache import cache
from django.db.models import F, IntegerField, Q, Sum
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast
from django.utils import timezone

from core.resolve_cache import resolve_cache_generation
from deployments.models import Installation
from fleet.inference_trust import inference_url_refusal
from fleet.models import Device, Site, Tier
from models_registry.models import Alias, RegisteredModel
from telemetry.models import TelemetrySample

from .exceptions import ResolveRefused
from .geo import haversine_km

RANK_SAME_SITE, RANK_FOG, RANK_CLOUD = 0, 1, 2
RANK_NAMES = {RANK_SAME_SITE: "same_site", RANK_FOG: "fog", RANK_CLOUD: "cloud"}


@dataclass(frozen=True)
class Origin:
    """Where the caller is: a site, or a point (with the nearest site close enough to count as its site)."""

    latitude: float
    longitude: float
    site_id: int | None


@dataclass(frozen=True)
class Endpoint:
    device: str
    device_id: int
    inference_url: str
    tier: str
    site: str
    rank: str
    distance_km: float
    p95_ms: float | None
    model: str
    version: int


@dataclass(frozen=True)
class Resolution:
    model: str
    alias: str
    version: int
    site: str | None
    endpoints: list[Endpoint]


def origin_for_site(name: str) -> Origin:
    site = Site.objects.filter(name=name).only("pk", "latitude", "longitude").first()
    if site is None:
        raise ResolveRefused("site", f"no site named {name!r}")
    return Origin(latitude=site.latitude, longitude=site.longitude, site_id=site.pk)


def origin_for_point(latitude: float, longitude: float) -> Origin:
    radius = settings.ENDPOINTS_SITE_RADIUS_KM
    nearest: tuple[float, int] | None = None
    for pk, lat, lon in Site.objects.values_list("pk", "latitude", "longitude"):
        distance = haversine_km(latitude, longitude, lat, lon)
        if distance <= radius and (nearest is None or distance < nearest[0]):
            nearest = (distance, pk)
    return Origin(latitude=latitude, longitude=longitude, site_id=nearest[1] if nearest else None)


def _aliased_version(model_name: str, alias_name: str) -> tuple[int, int]:
    """(number, id) of the version `model_name@alias_name` points at."""
    model = RegisteredModel.objects.filter(name=model_name).only("pk").first()
    if model is None:
        raise ResolveRefused("model", f"no model named {model_name!r}")
    row = Alias.objects.filter(model=model, name=alias_name).values_list("version__number", "version_id").first()
    if row is None:
        raise ResolveRefused("alias", f"model {model_name!r} has no alias {alias_name!r}")
    return int(row[0]), int(row[1])


def _bounding_box(origin: Origin, radius_km: float) -> Q:
    """Sites roughly within `radius_km` (a lat/lon box, cheap in SQL); haversine decides afterwards."""
    dlat = radius_km / 111.0
    cos_lat = math.cos(math.radians(origin.latitude))
    if abs(origin.latitude) + dlat >= 89 or cos_lat < 0.02:
        return Q(site__latitude__gte=origin.latitude - dlat)  # near a pole every longitude is close
    dlon = min(180.0, radius_km / (111.0 * cos_lat))
    return Q(
        site__latitude__range=(origin.latitude - dlat, origin.latitude + dlat),
        site__longitude__range=(origin.longitude - dlon, origin.longitude + dlon),
    )


def _site_gateways(origin: Origin) -> set[int]:
    """The parents (fog gateways, usually) of the devices at the caller's site."""
    if origin.site_id is None:
        return set()
    return set(
        Device.objects.filter(site_id=origin.site_id, parent__isnull=False)
        .order_by()  # the default ordering would make DISTINCT per (parent, uid)
        .values_list("parent_id", flat=True)
        .distinct()
    )


@dataclass(frozen=True)
class Candidate:
    pk: int
    uid: str
    tier: str
    site_id: int
    inference_url: str
    site_name: str
    latitude: float
    longitude: float
    inference_host: str


def _serving_devices(
    model_name: str, version: int, version_id: int, origin: Origin, gateways: set[int], now: dt.datetime
) -> list[Candidate]:
    """Online, fresh, unrevoked devices Fogdeck installed `version_id` on (a current Installation) that
    also report `model_name` active at `version`, and that could rank at all: at the caller's site, fog
    gateways of the site or near it, cloud nodes."""
    fresh_since = now - dt.timedelta(seconds=settings.DEVICE_STALE_AFTER_SECONDS)
    # KeyTransform takes the model name as one key, whatever characters it holds (no `__` parsing).
    active_version = Cast(
        KeyTextTransform("version", KeyTransform(model_name, KeyTransform("active", "reported_state"))),
        IntegerField(),
    )
    could_rank = Q(tier=Tier.CLOUD) | Q(tier=Tier.FOG) & (
        _bounding_box(origin, settings.ENDPOINTS_FOG_RADIUS_KM) | Q(pk__in=gateways)
    )
    if origin.site_id is not None:
        could_rank |= Q(site_id=origin.site_id)
    rows = (
        Device.objects.active()
        .online()
        .filter(could_rank, last_seen__gte=fresh_since)
        .exclude(inference_url="")
        # what the control plane installed (a succeeded job), not what the device claims; served by the
        # index on Installation.version_id, a handful of rows per version
        .filter(pk__in=Installation.objects.filter(version_id=version_id, until__isnull=True).values("device_id"))
        # ...and what it reports can only narrow that: a device that says it runs something else is left out
        .annotate(active_version=active_version)
        .filter(active_version=version)
        .values_list(
            "pk",
            "uid",
            "tier",
            "site_id",
            "inference_url",
            "site__name",
            "site__latitude",
            "site__longitude",
            "inference_host",
        )
    )
    # plain tuples: building hundreds of model instances per request would cost more than the query
    return [Candidate(*row) for row in rows]


def _recent_health(device_ids: list[int], model_name: str, version: int, now: dt.datetime) -> dict[int, tuple]:
    """device id -> (requests, errors, request-weighted mean p95) over the health window."""
    if not device_ids:
        return {}
    since = now - dt.timedelta(seconds=settings.ENDPOINTS_HEALTH_WINDOW_SECONDS)
    rows = (
        TelemetrySample.objects.filter(
            model_name=model_name, version_number=version, ts__gte=since, device_id__in=device_ids
        )
        .values("device_id")
        .annotate(total_requests=Sum("requests"), total_errors=Sum("errors"), p95_wsum=Sum(F("p95_ms") * F("requests")))
    )
    return {
        row["device_id"]: (
            row["total_requests"],
            row["total_errors"],
            row["p95_wsum"] / row["total_requests"] if row["total_requests"] else None,
        )
        for row in rows
    }


def endpoints_resolve(*, model_name: str, alias: str, origin: Origin, now: dt.datetime | None = None) -> Resolution:
    """The ordered healthy endpoints serving `model_name@alias` for a caller at `origin` (uncached)."""
    now = now or timezone.now()
    version, version_id = _aliased_version(model_name, alias)
    gateways_of_site = _site_gateways(origin)
    devices = [
        device
        for device in _serving_devices(model_name, version, version_id, origin, gateways_of_site, now)
        # an untrusted URL is stored as reported but never handed to callers (counted when reported)
        if inference_url_refusal(uid=device.uid, url=device.inference_url, inference_host=device.inference_host) is None
    ]
    health = _recent_health([d.pk for d in devices], model_name, version, now)
    max_rate = settings.ENDPOINTS_MAX_ERROR_RATE_PERMILLE / 1000
    fog_radius = settings.ENDPOINTS_FOG_RADIUS_KM

    ranked: list[tuple[tuple, Endpoint]] = []
    for device in devices:
        requests, errors, p95 = health.get(device.pk, (0, 0, None))
        if requests and errors / requests > max_rate:
            continue
        distance = haversine_km(origin.latitude, origin.longitude, device.latitude, device.longitude)
        if origin.site_id is not None and device.site_id == origin.site_id:
            rank = RANK_SAME_SITE
        elif device.tier == Tier.FOG and (device.pk in gateways_of_site or distance <= fog_radius):
            rank = RANK_FOG
        elif device.tier == Tier.CLOUD:
            rank = RANK_CLOUD
        else:
            continue
        endpoint = Endpoint(
            device=device.uid,
            device_id=device.pk,
            inference_url=device.inference_url,
            tier=device.tier,
            site=device.site_name,
            rank=RANK_NAMES[rank],
            distance_km=round(distance, 3),
            p95_ms=round(p95, 2) if p95 is not None else None,
            model=model_name,
            version=version,
        )
        # a device without telemetry yet sorts after measured ones at the same distance
        key = (rank, round(distance, 1), p95 if p95 is not None else float("inf"), device.uid)
        ranked.append((key, endpoint))
    ranked.sort(key=lambda item: item[0])
    site_name = next((e.site for _, e in ranked if e.rank == "same_site"), None)
    if site_name is None and origin.site_id is not None:
        site_name = Site.objects.filter(pk=origin.site_id).values_list("name", flat=True).first()
    return Resolution(
        model=model_name,
        alias=alias,
        version=version,
        site=site_name,
        endpoints=[e for _, e in ranked[: settings.ENDPOINTS_MAX_RESULTS]],
    )


def _cache_key(
    generation: int, model_name: str, alias: str, site: str | None, point: tuple[float, float] | None
) -> str:
    where = f"site={site}" if site is not None else f"at={point[0]:.5f},{point[1]:.5f}" if point else ""
    digest = hashlib.sha256(f"{model_name}\0{alias}\0{where}".encode()).hexdigest()[:32]
    return f"fogdeck:endpoints:resolve:{generation}:{digest}"


def endpoints_resolve_cached(
    *,
    model_name: str,
    alias: str,
    site: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
) -> dict[str, object]:
    """`endpoints_resolve` as a JSON-ready dict, cached per (generation, model, alias, site or point).

    Refusals (unknown model, alias or site) are not cached: they raise `ResolveRefused` every time.
    """
    point = (latitude, longitude) if latitude is not None and longitude is not None else None
    ttl = settings.ENDPOINTS_CACHE_SECONDS  # 0 turns the cache off
    key = _cache_key(resolve_cache_generation(), model_name, alias, site, point) if ttl else ""
    answer = cache.get(key) if ttl else None
    if answer is not None:
        return answer
    origin = origin_for_site(site) if site is not None else origin_for_point(*point)  # type: ignore[misc]
    resolution = endpoints_resolve(model_name=model_name, alias=alias, origin=origin)
    answer = asdict(resolution)
    answer["resolved_at"] = timezone.now().isoformat()
    if ttl:
        cache.set(key, answer, timeout=ttl)
    return answer
