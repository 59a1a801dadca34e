from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.expressions import AmongIds
from fleet.filters import STORED_FILTER_KEYS
from fleet.installed import installed_provider
from fleet.models import Device, DeviceGroup, DeviceRuntime, DeviceTag, GroupKind, Site
from fleet.selectors import devices_matching

_RUNTIME_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")
_VERSION = re.compile(r"^\d+(\.\d+){0,3}([.-][A-Za-z0-9]+)?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$")


class SiteSerializer(serializers.ModelSerializer):
    device_count = serializers.IntegerField(read_only=True, required=False)

    class Meta:
        model = Site
        fields = ["id", "name", "region", "latitude", "longitude", "device_count", "created_at"]
        read_only_fields = ["id", "created_at", "device_count"]


class RuntimeSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=40)
    version = serializers.CharField(max_length=40)

    def validate_name(self, value: str) -> str:
        if not _RUNTIME_NAME.match(value):
            raise serializers.ValidationError("use a lower-case runtime name such as onnxruntime, tflite, tensorrt")
        return value

    def validate_version(self, value: str) -> str:
        if not _VERSION.match(value):
            raise serializers.ValidationError("use a dotted version such as 1.18 or 2024.1")
        return value

    def validate(self, attrs: dict[str, str]) -> dict[str, str]:
        # A PATCH makes DRF skip missing fields of nested items too; a runtime is always given whole.
        missing = [name for name in ("name", "version") if name not in attrs]
        if missing:
            raise serializers.ValidationError({name: "This field is required." for name in missing})
        return attrs


# one entry of a device's `installed` (fleet/installed.py: deployments provides the values). A comment, not a
# docstring: drf-spectacular would make a docstring the schema component's description.
class InstalledSerializer(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.IntegerField()
    since = serializers.DateTimeField()


class DeviceSerializer(serializers.ModelSerializer):
    runtimes = RuntimeSerializer(many=True, required=False, source="runtime_list")
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, source="tag_list", max_length=50
    )
    has_credentials = serializers.BooleanField(read_only=True)
    revoked = serializers.BooleanField(read_only=True, source="is_revoked")
    installed = serializers.SerializerMethodField(help_text="model versions running now: {model, version, since}")

    class Meta:
        model = Device
        fields = [
            "id",
            "uid",
            "name",
            "site",
            "tier",
            "parent",
            "arch",
            "cpu",
            "memory_mb",
            "accelerator",
            "job_dialect",
            "runtimes",
            "tags",
            "agent_version",
            "inference_url",
            "inference_host",
            "status",
            "last_seen",
            "has_credentials",
            "revoked",
            "installed",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "agent_version", "inference_url", "status", "last_seen", "created_at", "updated_at"]

    @extend_schema_field(InstalledSerializer(many=True))
    def get_installed(self, device: Device) -> list[dict[str, Any]]:
        return installed_provider().of_device(device)

    def validate_runtimes(self, value: list[dict[str, str]]) -> list[dict[str, str]]:
        names = [r["name"] for r in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise serializers.ValidationError(f"runtime listed twice: {', '.join(duplicates)}")
        return value

    def validate_tags(self, value: list[str]) -> list[str]:
        bad = [t for t in value if not _TAG.match(t)]
        if bad:
            raise serializers.ValidationError(f"invalid tag {bad[0]!r}: letters, digits and _.:=- only")
        return sorted(set(value))

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        parent = attrs.get("parent", self.instance.parent if self.instance else None)
        tier = attrs.get("tier", self.instance.tier if self.instance else None)
        if parent is not None:
            problem = parent_problem(self.instance, parent, tier)
            if problem:
                raise serializers.ValidationError({"parent": [problem]})
        return attrs

    def to_service_kwargs(self) -> dict[str, Any]:
        data = dict(self.validated_data)
        if "runtime_list" in data:
            data["runtimes"] = [dict(r) for r in data.pop("runtime_list")]
        if "tag_list" in data:
            data["tags"] = data.pop("tag_list")
        return data


def device_list_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """`DeviceSerializer(devices, many=True).data` for rows of `Device.objects.listing()`: the same keys in
    the same order and the same values, built as plain dicts (DeviceSerializer still defines the fields,
    their validation and the schema). The serializer's field machinery costs a large share of the list's
    server CPU (docs/benchmarks.md, "CPU per request"); tests/fleet/test_device_list_rows.py holds the two equal.
    Runtimes, tags and current installations: one query each for all the rows, none for an empty page."""
    rows = list(rows)
    ids = [row["id"] for row in rows]
    runtimes: defaultdict[int, list[dict[str, str]]] = defaultdict(list)
    tags: defaultdict[int, list[str]] = defaultdict(list)
    installed: dict[int, list[dict[str, Any]]] = {}
    if ids:
        # DeviceRuntime's default ordering (name), as the prefetch had
        for device_id, name, version in DeviceRuntime.objects.filter(AmongIds("device_id", ids)).values_list(
            "device_id", "name", "version"
        ):
            runtimes[device_id].append({"name": name, "version": version})
        for device_id, tag in DeviceTag.objects.filter(AmongIds("device_id", ids)).values_list("device_id", "tag"):
            tags[device_id].append(tag)
        installed = installed_provider().of_devices(ids)  # deployments' rows (fleet/installed.py)
    # DRF's DateTimeField, its time zone looked up once for the page rather than once per value
    datetime = serializers.DateTimeField()
    datetime.timezone = datetime.default_timezone()
    as_text = datetime.to_representation
    return [
        {
            "id": row["id"],
            "uid": row["uid"],
            "name": row["name"],
            "site": row["site_id"],
            "tier": row["tier"],
            "parent": row["parent_id"],
            "arch": row["arch"],
            "cpu": row["cpu"],
            "memory_mb": row["memory_mb"],
            "accelerator": row["accelerator"],
            "job_dialect": row["job_dialect"],
            "runtimes": runtimes.get(row["id"], []),
            "tags": sorted(tags.get(row["id"], ())),
            "agent_version": row["agent_version"],
            "inference_url": row["inference_url"],
            "inference_host": row["inference_host"],
            "status": row["status"],
            "last_seen": as_text(row["last_seen"]),
            "has_credentials": bool(row["credential_hash"]) and row["revoked_at"] is None,
            "revoked": row["revoked_at"] is not None,
            "installed": installed.get(row["id"], []),
            "created_at": as_text(row["created_at"]),
            "updated_at": as_text(row["updated_at"]),
        }
        for row in rows
    ]


def parent_problem(device: Device | None, parent: Device, tier: str | None) -> str | None:
    """Why `parent` cannot be this device's gateway, or None. Parents are fog gateways or cloud nodes."""
    if parent.tier == "edge":
        return f"{parent.uid} is an edge device; a parent must be a fog gateway or a cloud node"
    if tier == "cloud":
        return "a cloud node has no parent gateway"
    if device is not None:
        seen = {device.pk}
        node: Device | None = parent
        while node is not None:
            if node.pk in seen:
                return f"{parent.uid} is this device or behind it: that would make a cycle"
            seen.add(node.pk)
            node = node.parent
    return None


class GroupSerializer(serializers.ModelSerializer):
    member_count = serializers.SerializerMethodField()

    class Meta:
        model = DeviceGroup
        fields = ["id", "name", "description", "kind", "filter", "member_count", "created_at"]
        read_only_fields = ["id", "created_at", "member_count"]

    def get_member_count(self, group: DeviceGroup) -> int:
        from fleet.selectors import group_members

        return group_members(group).count()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        kind = attrs.get("kind", self.instance.kind if self.instance else GroupKind.STATIC)
        stored = attrs.get("filter", self.instance.filter if self.instance else {})
        if kind == GroupKind.DYNAMIC:
            if not stored:
                raise serializers.ValidationError({"filter": ["a dynamic group needs a device filter"]})
            if not isinstance(stored, dict):
                raise serializers.ValidationError({"filter": ["must be an object of device-list filters"]})
            unknown = sorted(set(stored) - STORED_FILTER_KEYS)
            if unknown:
                raise serializers.ValidationError(
                    {"filter": [f"unknown filter {', '.join(unknown)}; use {', '.join(sorted(STORED_FILTER_KEYS))}"]}
                )
            try:
                devices_matching(stored)
            except ValueError as exc:
                raise serializers.ValidationError({"filter": [str(exc)]}) from None
        elif stored:
            raise serializers.ValidationError({"filter": ["only dynamic groups have a filter"]})
        return attrs


class MembersInputSerializer(serializers.Serializer):
    devices = serializers.PrimaryKeyRelatedField(queryset=Device.objects.all(), many=True, allow_empty=False)


class CredentialsSerializer(serializers.Serializer):
    device = serializers.IntegerField()
    username = serializers.CharField(help_text="the MQTT username: the device uid")
    secret = serializers.CharField(help_text="shown once; only its hash is stored")
    rotated = serializers.BooleanField()
    mqtt_url = serializers.CharField()


class RevokeInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class ImportRowSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    uid = serializers.CharField(allow_blank=True)
    outcome = serializers.ChoiceField(choices=["created", "updated", "error"])
    errors = serializers.ListField(child=serializers.DictField(child=serializers.CharField()))


class ImportReportSerializer(serializers.Serializer):
    format = serializers.CharField()
    total = serializers.IntegerField()
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    failed = serializers.IntegerField()
    rows = ImportRowSerializer(many=True)


class ImportInputSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV (header row) or JSON (a list of device objects)")
