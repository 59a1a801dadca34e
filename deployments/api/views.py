from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.actors import Actor
from core import roles
from core.errors import Conflict
from deployments.exceptions import DeploymentRefused, InvalidTransition, PlanInvalid
from deployments.models import Job, Rollout
from deployments.selectors import artifact_transfer_summary, device_history, rollout_counts, rollout_excluded
from deployments.services.job_endings import job_cancel
from deployments.services.jobs import deployment_create
from deployments.services.rollout_drafts import rollout_create, rollout_preview
from deployments.services.rollouts import (
    rollout_abort,
    rollout_approve,
    rollout_force_rollback,
    rollout_pause,
    rollout_resume,
    rollout_rollback,
    rollout_skip_gates,
    rollout_start,
)
from fleet.api.views import DeviceViewSet
from fleet.models import Device

from .filters import DeploymentFilter
from .serializers import (
    CancelInputSerializer,
    DeploymentCreateSerializer,
    DeploymentSerializer,
    DeviceHistoryQuerySerializer,
    DeviceHistorySerializer,
    RolloutDetailSerializer,
    RolloutEmergencySerializer,
    RolloutPlanSerializer,
    RolloutPreviewSerializer,
    RolloutReasonSerializer,
    RolloutSerializer,
    rollout_detail,
)


class DeploymentViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Job]
):
    """Single-device deployments (jobs). Operators create and cancel them; every role reads them."""

    queryset = Job.objects.select_related(
        "device", "model", "version", "pipeline", "pipeline_version", "rollout", "wave"
    ).prefetch_related("events")
    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilter
    ordering_fields = ["created_at", "status"]
    write_role = roles.OPERATOR

    @extend_schema(request=DeploymentCreateSerializer, responses={201: DeploymentSerializer})
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        payload = DeploymentCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            job = deployment_create(actor=Actor.for_user(request.user), **payload.validated_data)
        except DeploymentRefused as exc:
            raise Conflict(exc.reason) from None
        return Response(DeploymentSerializer(self.get_queryset().get(pk=job.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=CancelInputSerializer, responses={200: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        payload = CancelInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            job = job_cancel(actor=Actor.for_user(request.user), job=self.get_object(), **payload.validated_data)
        except InvalidTransition as exc:
            raise Conflict(str(exc)) from None
        return Response(DeploymentSerializer(self.get_queryset().get(pk=job.pk)).data)


# --- rollouts ------------------------------------------------------------------------------------


ROLLOUT_RELATED = ("model", "version", "pipeline", "pipeline_version")


def _plan_error(exc: PlanInvalid) -> ValidationError:
    return ValidationError({exc.field or "non_field_errors": [exc.reason]})


class RolloutViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Rollout]
):
    """Staged canary rollouts. Operators plan, start and steer them; the emergency path is for admins."""

    queryset = Rollout.objects.select_related(*ROLLOUT_RELATED)
    serializer_class = RolloutSerializer
    filterset_fields = ["status", "model", "version", "pipeline", "pipeline_version"]
    ordering_fields = ["created_at", "status"]
    write_role = roles.OPERATOR
    action_roles = {"emergency": roles.ADMIN}

    def _detail(self, rollout: Rollout, code: int = status.HTTP_200_OK, *, loaded: bool = False) -> Response:
        # A rollout's detail in a fixed number of queries whatever its size (tests/deployments/test_rollout_api.py):
        # the rollout, its waves, its gate results and events in one query (plain rows, serializers.rollout_detail),
        # its counts (RolloutCount rows, a few per wave), its artifact transfers; excluded devices only when it has
        # some.
        if not loaded:
            rollout = Rollout.objects.select_related(*ROLLOUT_RELATED).get(pk=rollout.pk)
        counts = rollout_counts(rollout.pk)
        data = rollout_detail(
            rollout,
            counts=counts,
            excluded=rollout_excluded(rollout, counts=counts),
            artifact_transfer=artifact_transfer_summary(rollout),
        )
        return Response(data, status=code)

    @extend_schema(responses={200: RolloutDetailSerializer})
    def retrieve(self, request: Request, *args: object, **kwargs: object) -> Response:
        return self._detail(self.get_object(), loaded=True)

    @extend_schema(request=RolloutPlanSerializer, responses={201: RolloutDetailSerializer})
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        payload = RolloutPlanSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version, name, plan = payload.to_plan()
        try:
            rollout = rollout_create(actor=Actor.for_user(request.user), version=version, plan=plan, name=name)
        except PlanInvalid as exc:
            raise _plan_error(exc) from None
        return self._detail(rollout, status.HTTP_201_CREATED)

    @extend_schema(request=RolloutPlanSerializer, responses={200: RolloutPreviewSerializer})
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        """The waves' sizes and the excluded devices (with reasons) for this plan now; nothing is written."""
        payload = RolloutPlanSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version, _name, plan = payload.to_plan()  # no seed given: the preview samples with seed 0
        try:
            planned = rollout_preview(version=version, plan=plan)
        except PlanInvalid as exc:
            raise _plan_error(exc) from None
        return Response(RolloutPreviewSerializer(planned.summary()).data)

    def _act(self, request: Request, service: Callable[..., Rollout], **extra: Any) -> Response:
        payload = RolloutReasonSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        kwargs = {"reason": payload.validated_data["reason"], **extra} if service is not rollout_start else extra
        try:
            rollout = service(actor=Actor.for_user(request.user), rollout=self.get_object(), **kwargs)
        except (InvalidTransition, DeploymentRefused) as exc:
            raise Conflict(str(exc)) from None
        except PlanInvalid as exc:
            raise _plan_error(exc) from None
        return self._detail(rollout)

    @extend_schema(request=None, responses={200: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, rollout_start)

    @extend_schema(request=RolloutReasonSerializer, responses={200: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, rollout_pause)

    @extend_schema(request=RolloutReasonSerializer, responses={200: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, rollout_resume)

    @extend_schema(request=RolloutReasonSerializer, responses={200: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def abort(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, rollout_abort)

    @extend_schema(request=RolloutReasonSerializer, responses={200: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, rollout_rollback)

    @extend_schema(request=RolloutReasonSerializer, responses={200: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, rollout_approve)

    @extend_schema(request=RolloutEmergencySerializer, responses={200: RolloutDetailSerializer})
    @action(detail=True, methods=["post"])
    def emergency(self, request: Request, pk: str | None = None) -> Response:
        """Admin only, audited, reason mandatory: skip the remaining gates, or roll back now (jobs in progress too)."""
        payload = RolloutEmergencySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        service = rollout_skip_gates if payload.validated_data["action"] == "skip_gates" else rollout_force_rollback
        try:
            rollout = service(
                actor=Actor.for_user(request.user), rollout=self.get_object(), reason=payload.validated_data["reason"]
            )
        except (InvalidTransition, DeploymentRefused) as exc:
            raise Conflict(str(exc)) from None
        except PlanInvalid as exc:
            raise _plan_error(exc) from None
        return self._detail(rollout)


# Any: its object is a Device, its serializer and its rows are Installations' (the stubs allow one model)
class DeviceHistoryViewSet(viewsets.GenericViewSet[Any]):
    """`GET /devices/{id}/history/`, the device API's history action. It reads installations and jobs, so it
    is served here rather than by fleet's DeviceViewSet (a layer below); deployments/api/urls.py registers
    it under the same `devices` prefix, route name and schema operation. The device is found as the device
    views find it (their filters apply), so nothing about the URL's answers changed with the move."""

    queryset = Device.objects.all()
    serializer_class = DeviceHistorySerializer
    filterset_class = DeviceViewSet.filterset_class
    ordering_fields = DeviceViewSet.ordering_fields

    @extend_schema(
        parameters=[OpenApiParameter("model", int, description="only this model"),
                    OpenApiParameter("version", int, description="only this model version")],
        responses={200: DeviceHistorySerializer(many=True)},
    )  # fmt: skip
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str | None = None) -> Response:
        """Which model version ran on this device, from when to when, and the job or rollout that changed it."""
        params = DeviceHistoryQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        rows = device_history(
            self.get_object(),
            model_id=params.validated_data.get("model"),
            version_id=params.validated_data.get("version"),
        )
        page = self.paginate_queryset(rows)
        if page is not None:
            return self.get_paginated_response(DeviceHistorySerializer(page, many=True).data)
        return Response(DeviceHistorySerializer(rows, many=True).data)
