from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from audit.actors import Actor
from core import roles
from core.errors import Conflict
from deployments.exceptions import DeploymentRefused, InvalidTransition
from deployments.models import Job
from deployments.services import deployment_create, job_cancel

from .filters import DeploymentFilter
from .serializers import CancelInputSerializer, DeploymentCreateSerializer, DeploymentSerializer


class DeploymentViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Single-device deployments (jobs). Operators create and cancel them; every role reads them."""

    queryset = Job.objects.select_related("device", "model", "version").prefetch_related("events")
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
