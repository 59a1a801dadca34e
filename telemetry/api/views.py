from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.actors import Actor
from core import roles
from models_registry.models import ModelVersion
from protocol.messages import DEFAULT_HIST_EDGES
from telemetry.drift import ProfileInvalid, profile_from_samples, reference_profile_set
from telemetry.filters import DriftAlertFilter
from telemetry.models import DriftAlert, ReferenceProfile
from telemetry.series import telemetry_series

from .serializers import (
    DriftAlertSerializer,
    ReferenceProfileInputSerializer,
    ReferenceProfileSerializer,
    TelemetryBucketSerializer,
    TelemetrySeriesQuerySerializer,
)


class DriftAlertViewSet(viewsets.ReadOnlyModelViewSet):
    """Drift alerts per (version, site): "retraining needed", with the features that moved most."""

    serializer_class = DriftAlertSerializer
    filterset_class = DriftAlertFilter
    ordering_fields = ["opened_at", "psi", "peak_psi"]
    ordering = ["-opened_at", "-id"]
    queryset = DriftAlert.objects.select_related("version__model", "site")


_PATH = [
    OpenApiParameter("model_id", int, OpenApiParameter.PATH),
    OpenApiParameter("number", int, OpenApiParameter.PATH, description="version number"),
]


class ReferenceProfileView(APIView):
    """A model version's reference input profile (from its training data); operators set it."""

    write_role = roles.OPERATOR

    def _version(self, model_id: int, number: int) -> ModelVersion:
        return get_object_or_404(ModelVersion.objects.select_related("model"), model_id=model_id, number=number)

    @extend_schema(parameters=_PATH, responses={200: ReferenceProfileSerializer})
    def get(self, request: Request, model_id: int, number: int) -> Response:
        version = self._version(model_id, number)
        profile = ReferenceProfile.objects.filter(version=version).select_related("version__model").first()
        if profile is None:
            raise NotFound(f"version {number} has no reference profile")
        return Response(ReferenceProfileSerializer(profile).data)

    @extend_schema(
        parameters=_PATH, request=ReferenceProfileInputSerializer, responses={200: ReferenceProfileSerializer}
    )
    def put(self, request: Request, model_id: int, number: int) -> Response:
        version = self._version(model_id, number)
        payload = ReferenceProfileInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data
        features = data.get("features")
        sample_count = data["sample_count"]
        if "samples" in data:
            features, rows = _profile_of_samples(data["samples"], data.get("edges") or list(DEFAULT_HIST_EDGES))
            sample_count = sample_count or rows
        try:
            profile = reference_profile_set(
                actor=Actor.for_user(request.user), version=version, features=features,
                sample_count=sample_count, source=data["source"],
            )  # fmt: skip
        except ProfileInvalid as exc:
            raise ValidationError({exc.field: [exc.reason]}) from None
        profile.version = version
        return Response(ReferenceProfileSerializer(profile).data)


def _profile_of_samples(samples: dict[str, Any], edges: list[float]) -> tuple[dict[str, Any], int]:
    if any(b <= a for a, b in pairwise(edges)):
        raise ValidationError({"edges": ["must be strictly increasing"]})
    arrays = {}
    for name, rows in samples.items():
        try:
            array = np.asarray(rows, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValidationError({f"samples.{name}": ["must be a rectangular array of numbers"]}) from None
        if array.size == 0 or not np.isfinite(array).any():
            raise ValidationError({f"samples.{name}": ["must hold at least one finite number"]})
        arrays[name] = array
    try:
        features = profile_from_samples(arrays, edges=edges)
    except ValueError as exc:
        raise ValidationError({"samples": [str(exc)]}) from None
    rows = max(1 if a.ndim == 0 else int(np.prod(a.shape[:-1])) for a in arrays.values())
    return features, rows


class TelemetrySeriesView(GenericAPIView):
    """Requests, errors, error rate and latency percentiles per time bucket, per model version, site,
    device or rollout cohort (canary: the rollout's version; baseline: the model's other versions).

    Fleet-wide figures come from the minute rollups (kept TELEMETRY_ROLLUP_RETENTION_DAYS); asking for
    devices (`device=` or `group_by=device`) reads the raw samples (kept TELEMETRY_RAW_RETENTION_HOURS).
    Buckets are aligned to the Unix epoch; a bucket with no telemetry is left out. Rows are ordered by
    group, then time, and paginated (`page`, `page_size`)."""

    serializer_class = TelemetryBucketSerializer
    filter_backends: list[Any] = []  # the query string is TelemetrySeriesQuerySerializer's

    @extend_schema(parameters=[TelemetrySeriesQuerySerializer], responses={200: TelemetryBucketSerializer(many=True)})
    def get(self, request: Request) -> Response:
        params = TelemetrySeriesQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        rows = telemetry_series(params.validated_data["query"])
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(TelemetryBucketSerializer(page, many=True).data)
