from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.actors import Actor
from webhooks.destinations import DestinationRefused
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from webhooks.services import (
    SubscriptionWithSecret,
    UnknownEventKind,
    webhook_create,
    webhook_delete,
    webhook_rotate_secret,
    webhook_update,
)

from .serializers import (
    WebhookDeliverySerializer,
    WebhookSubscriptionCreatedSerializer,
    WebhookSubscriptionSerializer,
)


def _actor(request: Request) -> Actor:
    return Actor.for_user(request.user)


def _with_secret(result: SubscriptionWithSecret, code: int) -> Response:
    data = WebhookSubscriptionSerializer(result.subscription).data | {"secret": result.secret}
    response = Response(data, status=code)
    response["Cache-Control"] = "no-store"
    return response


class WebhookViewSet(viewsets.ModelViewSet):
    """Webhook subscriptions. Viewers read (secrets are never returned); admins manage."""

    queryset = WebhookSubscription.objects.all()
    serializer_class = WebhookSubscriptionSerializer
    filterset_fields = ["active"]
    ordering_fields = ["name", "created_at"]

    @extend_schema(responses={201: WebhookSubscriptionCreatedSerializer})
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            result = webhook_create(actor=_actor(request), **serializer.validated_data)
        except UnknownEventKind as exc:
            raise ValidationError({"event_kinds": str(exc)}) from None
        except DestinationRefused as exc:  # the name's addresses changed since the serializer looked
            raise ValidationError({"url": exc.reason}) from None
        return _with_secret(result, status.HTTP_201_CREATED)

    def perform_update(self, serializer: WebhookSubscriptionSerializer) -> None:  # type: ignore[override]
        try:
            webhook_update(actor=_actor(self.request), subscription=serializer.instance, **serializer.validated_data)
        except DestinationRefused as exc:
            raise ValidationError({"url": exc.reason}) from None

    def perform_destroy(self, instance: WebhookSubscription) -> None:
        webhook_delete(actor=_actor(self.request), subscription=instance)

    @extend_schema(request=None, responses={200: WebhookSubscriptionCreatedSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """Replace the signing secret; the new one is in this response only."""
        return _with_secret(webhook_rotate_secret(actor=_actor(request), subscription=self.get_object()), 200)

    @extend_schema(responses={200: WebhookDeliverySerializer(many=True)})
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        """The delivery log: newest first, each with its attempts."""
        subscription = self.get_object()
        rows: QuerySet[WebhookDelivery] = subscription.deliveries.prefetch_related(
            Prefetch("attempt_log", queryset=WebhookAttempt.objects.order_by("number"))
        ).order_by("-created_at")
        page = self.paginate_queryset(rows)
        if page is not None:
            return self.get_paginated_response(
                WebhookDeliverySerializer(page, many=True, context={"request": request}).data
            )
        return Response(WebhookDeliverySerializer(rows, many=True, context={"request": request}).data)
