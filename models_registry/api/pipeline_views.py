"""Pipelines API: `/pipelines/` and `/pipelines/{pipeline_id}/versions/` (+ publish, deprecate, revoke,
compatibility). Reads for every role; writes for admins, as for models."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from core import roles
from fleet.filters import DeviceFilter
from fleet.models import Device
from models_registry.compatibility import pipeline_requirements_of
from models_registry.models import Pipeline, PipelineVersion
from models_registry.pipeline_services import (
    pipeline_create,
    pipeline_version_create,
    pipeline_version_deprecate,
    pipeline_version_publish,
    pipeline_version_revoke,
)
from models_registry.selectors import requirements_compatibility

from .pipeline_serializers import (
    PipelineDeprecateInputSerializer,
    PipelineRevokeInputSerializer,
    PipelineSerializer,
    PipelineVersionInputSerializer,
    PipelineVersionSerializer,
)
from .serializers import CompatibilitySerializer
from .views import RegistryErrorsMixin, _device_filter_parameters, actor_of

PIPELINE_ID = OpenApiParameter("pipeline_id", int, OpenApiParameter.PATH, description="the pipeline's id")


def _validation(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})


class PipelineViewSet(
    RegistryErrorsMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Pipelines: ordered chains of model versions deployed as one unit."""

    queryset = Pipeline.objects.annotate(version_count=Count("versions")).select_related("owner").order_by("name")
    serializer_class = PipelineSerializer
    lookup_url_kwarg = "pipeline_id"
    write_role = roles.ADMIN

    def perform_create(self, serializer: PipelineSerializer) -> None:  # type: ignore[override]
        try:
            pipeline = pipeline_create(
                actor=actor_of(self.request), owner=self.request.user, **serializer.validated_data
            )
        except DjangoValidationError as exc:
            raise _validation(exc) from None
        serializer.instance = self.get_queryset().get(pk=pipeline.pk)


@extend_schema_view(
    list=extend_schema(parameters=[PIPELINE_ID]),
    retrieve=extend_schema(parameters=[PIPELINE_ID]),
    create=extend_schema(
        parameters=[PIPELINE_ID], request=PipelineVersionInputSerializer, responses={201: PipelineVersionSerializer}
    ),
)
class PipelineVersionViewSet(
    RegistryErrorsMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """A pipeline's versions, addressed by number; immutable once created, lifecycle as model versions."""

    serializer_class = PipelineVersionSerializer
    lookup_field = "number"
    lookup_value_regex = "[0-9]+"
    write_role = roles.ADMIN

    def get_pipeline(self) -> Pipeline:
        if not hasattr(self, "_pipeline"):
            self._pipeline = get_object_or_404(Pipeline, pk=self.kwargs["pipeline_id"])
        return self._pipeline

    def get_queryset(self) -> QuerySet[PipelineVersion]:
        if getattr(self, "swagger_fake_view", False):
            return PipelineVersion.objects.none()
        return PipelineVersion.objects.with_stages().filter(pipeline=self.get_pipeline()).order_by("-number")

    def _answer(self, version: PipelineVersion, code: int = status.HTTP_200_OK) -> Response:
        return Response(PipelineVersionSerializer(self.get_queryset().get(pk=version.pk)).data, status=code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = PipelineVersionInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            version = pipeline_version_create(
                actor=actor_of(request),
                pipeline=self.get_pipeline(),
                stages=payload.validated_data["stages"],
                created_by=request.user,
            )
        except DjangoValidationError as exc:
            raise _validation(exc) from None
        return self._answer(version, status.HTTP_201_CREATED)

    @extend_schema(parameters=[PIPELINE_ID], request=None, responses={200: PipelineVersionSerializer})
    @action(detail=True, methods=["post"])
    def publish(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Sign and publish a draft: one signature covers every stage's sha256. Re-publishing changes nothing."""
        return self._answer(pipeline_version_publish(actor=actor_of(request), version=self.get_object()))

    @extend_schema(
        parameters=[PIPELINE_ID], request=PipelineDeprecateInputSerializer, responses={200: PipelineVersionSerializer}
    )
    @action(detail=True, methods=["post"])
    def deprecate(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = PipelineDeprecateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = pipeline_version_deprecate(
            actor=actor_of(request), version=self.get_object(), reason=payload.validated_data["reason"]
        )
        return self._answer(version)

    @extend_schema(
        parameters=[PIPELINE_ID], request=PipelineRevokeInputSerializer, responses={200: PipelineVersionSerializer}
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = PipelineRevokeInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = pipeline_version_revoke(
            actor=actor_of(request), version=self.get_object(), reason=payload.validated_data["reason"]
        )
        return self._answer(version)

    @extend_schema(parameters=[PIPELINE_ID, *_device_filter_parameters()], responses={200: CompatibilitySerializer})
    @action(detail=True, methods=["get"])
    def compatibility(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """How many devices matching the device filters can run every stage; the others' reasons name the stage."""
        version = self.get_object()
        filterset = DeviceFilter(request.query_params, queryset=Device.objects.with_inventory(), request=request)
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        summary = requirements_compatibility(pipeline_requirements_of(version.ordered_stages()), filterset.qs)
        body = {
            "compatible": summary.compatible,
            "incompatible": summary.incompatible,
            "total": summary.total,
            "reasons": summary.reasons,
        }
        return Response(CompatibilitySerializer(body).data)
