from __future__ import annotations

from typing import Any

from rest_framework import serializers


class ResolveQuerySerializer(serializers.Serializer):
    """Who is asking for what: `model`, `alias` (default production) and either `site` or `lat`+`lon`."""

    model = serializers.CharField(max_length=120)
    alias = serializers.SlugField(max_length=64, default="production")
    site = serializers.CharField(max_length=120, required=False)
    lat = serializers.FloatField(min_value=-90, max_value=90, required=False)
    lon = serializers.FloatField(min_value=-180, max_value=180, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        has_point = "lat" in attrs or "lon" in attrs
        if "site" in attrs and has_point:
            raise serializers.ValidationError({"site": "give either site or lat/lon, not both"})
        if has_point:
            for name in ("lat", "lon"):
                if name not in attrs:
                    raise serializers.ValidationError({name: "lat and lon are required together"})
        elif "site" not in attrs:
            raise serializers.ValidationError({"site": "give site, or lat and lon"})
        return attrs


class EndpointSerializer(serializers.Serializer):
    device = serializers.CharField(help_text="device uid")
    device_id = serializers.IntegerField()
    inference_url = serializers.CharField(help_text="POST here to run the model")
    tier = serializers.CharField()
    site = serializers.CharField()
    rank = serializers.ChoiceField(choices=["same_site", "fog", "cloud"])
    distance_km = serializers.FloatField()
    p95_ms = serializers.FloatField(allow_null=True, help_text="request-weighted mean p95 over the health window")
    model = serializers.CharField()
    version = serializers.IntegerField()


class ResolutionSerializer(serializers.Serializer):
    model = serializers.CharField()
    alias = serializers.CharField()
    version = serializers.IntegerField()
    site = serializers.CharField(allow_null=True, help_text="the caller's site, when known")
    resolved_at = serializers.DateTimeField()
    endpoints = EndpointSerializer(many=True)
