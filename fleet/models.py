from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from protocol.topics import DEVICE_UID_PATTERN, SERVICE_CLIENT_ID_PREFIX, is_service_client_id

RUNTIME_NAMES = ("onnxruntime", "tflite", "tensorrt", "openvino", "torchscript")
device_uid_validator = RegexValidator(
    rf"^{DEVICE_UID_PATTERN}$",
    "Use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit (it is part of MQTT topics).",
)
# a DNS name (labels of letters, digits and '-'), an IPv4 address, or an IPv6 address without brackets
inference_host_validator = RegexValidator(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$",
    "Give a host name or an IP address, without scheme, port or brackets.",
)


def validate_device_uid_not_reserved(uid: str) -> None:
    """A device's MQTT client id is its uid; `fogdeck-…` client ids are the control plane's."""
    if is_service_client_id(uid):
        raise ValidationError(
            f"A uid may not start with {SERVICE_CLIENT_ID_PREFIX!r}: MQTT client ids in that namespace are "
            "reserved for the control plane.",
            code="reserved",
        )


class Site(models.Model):
    name = models.CharField(max_length=120, unique=True)
    region = models.CharField(max_length=80, blank=True)
    latitude = models.FloatField(validators=[MinValueValidator(-90), MaxValueValidator(90)])
    longitude = models.FloatField(validators=[MinValueValidator(-180), MaxValueValidator(180)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tier(models.TextChoices):
    CLOUD = "cloud", "Cloud node"
    FOG = "fog", "Fog gateway"
    EDGE = "edge", "Edge device"


class Arch(models.TextChoices):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"
    ARMV7L = "armv7l"
    RISCV64 = "riscv64"


class Accelerator(models.TextChoices):
    NONE = "none"
    GPU = "gpu"
    NPU = "npu"
    TPU = "tpu"


class JobDialect(models.TextChoices):
    """The MQTT API a device takes its jobs in (protocol/device_topics.py or protocol/aws_jobs.py)."""

    FOGDECK = "fogdeck"
    AWS_IOT_JOBS = "aws-iot-jobs"


class ConnectionStatus(models.TextChoices):
    ONLINE = "online"
    OFFLINE = "offline"


class DeviceQuerySet(models.QuerySet["Device"]):
    def with_inventory(self) -> DeviceQuerySet:
        """Everything a device list shows, in a fixed number of queries (no N+1)."""
        return self.select_related("site", "parent").prefetch_related("runtimes", "tag_links")

    # The columns the API's device list shows (DeviceSerializer's model fields; site and parent as ids,
    # credential_hash and revoked_at for its two flags). Not reported_state: a JSON column it never shows.
    LISTING_FIELDS = (
        "id", "uid", "name", "site_id", "tier", "parent_id", "arch", "cpu", "memory_mb", "accelerator",
        "agent_version", "status", "last_seen", "credential_hash", "revoked_at", "created_at", "updated_at",
        "inference_host", "inference_url", "job_dialect",
    )  # fmt: skip

    def listing(self) -> models.QuerySet[Device, dict[str, Any]]:
        """What the API's device list shows, for reading only: one dict per device of LISTING_FIELDS
        (`values()`), no model instances, no JSON decoding. It filters, orders and paginates like any
        queryset; `fleet.api.serializers.device_list_rows` turns a page of it into DeviceSerializer's
        output, with runtimes, tags and current installations in one query each for the page. Code that
        needs model instances wants `with_inventory`."""
        return self.values(*self.LISTING_FIELDS)

    def active(self) -> DeviceQuerySet:
        return self.filter(revoked_at__isnull=True)

    def online(self) -> DeviceQuerySet:
        return self.filter(status=ConnectionStatus.ONLINE)

    def reachable(self, now: dt.datetime | None = None) -> DeviceQuerySet:
        """Online and heard from within DEVICE_STALE_AFTER_SECONDS: a device that can answer a job now."""
        cutoff = (now or timezone.now()) - dt.timedelta(seconds=settings.DEVICE_STALE_AFTER_SECONDS)
        return self.online().filter(last_seen__gte=cutoff)

    def stale(self, now: dt.datetime | None = None) -> DeviceQuerySet:
        """Marked online but silent for longer than DEVICE_STALE_AFTER_SECONDS."""
        cutoff = (now or timezone.now()) - dt.timedelta(seconds=settings.DEVICE_STALE_AFTER_SECONDS)
        return self.online().filter(models.Q(last_seen__lt=cutoff) | models.Q(last_seen__isnull=True))


class Device(models.Model):
    uid = models.CharField(
        max_length=64, unique=True, validators=[device_uid_validator, validate_device_uid_not_reserved]
    )
    name = models.CharField(max_length=120)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="devices")
    tier = models.CharField(max_length=8, choices=Tier.choices)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        help_text="the fog gateway (or cloud node) this device reaches the control plane through",
    )
    arch = models.CharField(max_length=16, choices=Arch.choices)
    cpu = models.CharField(max_length=120, blank=True, help_text="CPU model and cores, e.g. 'Cortex-A72 x4'")
    memory_mb = models.PositiveIntegerField(validators=[MinValueValidator(16)])
    accelerator = models.CharField(max_length=8, choices=Accelerator.choices, default=Accelerator.NONE)
    agent_version = models.CharField(max_length=40, blank=True)
    job_dialect = models.CharField(
        max_length=16,
        choices=JobDialect.choices,
        default=JobDialect.FOGDECK,
        help_text="the jobs API the device speaks: Fogdeck's own or the AWS IoT Jobs MQTT API",
    )
    status = models.CharField(max_length=8, choices=ConnectionStatus.choices, default=ConnectionStatus.OFFLINE)
    last_seen = models.DateTimeField(null=True, blank=True)
    reported_state = models.JSONField(default=dict, blank=True, help_text="the agent's last reported state")
    reported_at = models.DateTimeField(null=True, blank=True)
    inference_url = models.CharField(
        max_length=500, blank=True, help_text="where applications call the device's POST /infer (reported state)"
    )
    # What the control plane knows, not what the device says: resolve serves `inference_url` only when
    # its host is this one (or matches ENDPOINTS_TRUSTED_INFERENCE_HOSTS). Set by an admin.
    inference_host = models.CharField(
        max_length=253,
        blank=True,
        validators=[inference_host_validator],
        help_text="the host (name or IP) the device's inference URL must name for resolve to serve it; admin-set",
    )
    credential_hash = models.CharField(max_length=200, blank=True, help_text="Mosquitto $7$ PBKDF2-SHA512 hash")
    credential_issued_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["uid"]
        indexes = [
            # the device list's most common filters: tier and online state, ordered by uid (the page)
            models.Index(fields=["tier", "status", "uid"], name="device_tier_status_idx"),
            # the same list's COUNT(*) for its pagination: an index-only scan of (tier, status) alone reads
            # far fewer pages than the uid index above (deduplicated keys; docs/benchmarks.md)
            models.Index(fields=["tier", "status"], name="device_tier_status_count_idx"),
            models.Index(fields=["site", "tier"], name="device_site_tier_idx"),
            # the stale-heartbeat sweep
            models.Index(fields=["status", "last_seen"], name="device_status_seen_idx"),
            models.Index(fields=["accelerator"], name="device_accelerator_idx"),
        ]

    def __str__(self) -> str:
        return self.uid

    def is_reachable(self, now: dt.datetime | None = None) -> bool:
        """The single-row form of `Device.objects.reachable()`: online and heard from recently."""
        cutoff = (now or timezone.now()) - dt.timedelta(seconds=settings.DEVICE_STALE_AFTER_SECONDS)
        return self.status == ConnectionStatus.ONLINE and self.last_seen is not None and self.last_seen >= cutoff

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def has_credentials(self) -> bool:
        return bool(self.credential_hash) and not self.is_revoked

    @property
    def runtime_list(self) -> list[dict[str, str]]:
        runtimes = getattr(self, "prefetched_runtimes", None)  # set by DeviceQuerySet.listing()
        if runtimes is None:
            runtimes = self.runtimes.all()
        return [{"name": r.name, "version": r.version} for r in runtimes]

    @property
    def tag_list(self) -> list[str]:
        tags = getattr(self, "prefetched_tags", None)  # set by DeviceQuerySet.listing()
        if tags is None:
            tags = self.tag_links.all()
        return sorted(t.tag for t in tags)


class DeviceRuntime(models.Model):
    """A model runtime a device can execute, e.g. onnxruntime 1.18 (rows so filters use an index)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="runtimes")
    name = models.CharField(max_length=40)
    version = models.CharField(max_length=40)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["device", "name"], name="runtime_unique_per_device")]
        # `?runtime=` filters devices by runtime name
        indexes = [models.Index(fields=["name", "device"], name="runtime_name_device_idx")]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class DeviceTag(models.Model):
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="tag_links")
    tag = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "tag"], name="tag_unique_per_device")]
        # `?tag=` filters devices by tag
        indexes = [models.Index(fields=["tag", "device"], name="tag_device_idx")]

    def __str__(self) -> str:
        return self.tag


class GroupKind(models.TextChoices):
    STATIC = "static"
    DYNAMIC = "dynamic"


class DeviceGroup(models.Model):
    """A static list of devices, or a dynamic one: a stored device filter evaluated on demand."""

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=8, choices=GroupKind.choices, default=GroupKind.STATIC)
    filter = models.JSONField(default=dict, blank=True, help_text="device-list filters, for dynamic groups")
    devices = models.ManyToManyField(Device, blank=True, related_name="static_groups")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_dynamic(self) -> bool:
        return self.kind == GroupKind.DYNAMIC


class ArtifactSource(models.TextChoices):
    GATEWAY = "gateway", "Fog gateway cache"
    CLOUD = "cloud", "Cloud"


class ArtifactTransfer(models.Model):
    """Where one succeeded job's artifact came from, as the device reported it (gateway cache or cloud).

    `job_id` and `rollout_id` are plain ids, not foreign keys: deployments depends on fleet, not the
    other way round. One row per job (QoS 1 redeliveries change nothing).
    """

    job_id = models.UUIDField(unique=True)
    rollout_id = models.BigIntegerField(null=True, blank=True)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="artifact_transfers")
    gateway = models.ForeignKey(
        Device,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="artifact_transfers_served",
        help_text="the device's parent that served it, when the source is the gateway",
    )
    sha256 = models.CharField(max_length=64)
    source = models.CharField(max_length=8, choices=ArtifactSource.choices)
    size = models.PositiveBigIntegerField(help_text="bytes the device downloaded from the source")
    refused = models.JSONField(default=list, blank=True, help_text="sources refused first: [{source, reason}]")
    # Whether `refused` names the gateway, kept as a column so the rollout summary counts refused gateway
    # copies with a plain filter on every backend (SQLite has no JSON containment lookup).
    gateway_refused = models.BooleanField(default=False, editable=False)
    reported_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # artifact_transfer_summary: bytes per source (and gateway) for one rollout
        indexes = [models.Index(fields=["rollout_id", "source"], name="transfer_rollout_source_idx")]

    def __str__(self) -> str:
        return f"{self.job_id} from {self.source}"
