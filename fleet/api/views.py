from __future__ import annotations

from django.conf import settings
from django.db.models import Count, ProtectedError, QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from audit.actors import Actor
from core.csv_export import CSVRenderer
from core.errors import Conflict
from fleet.device_csv import device_csv_lines
from fleet.filters import DeviceFilter
from fleet.importing import ImportFileError, devices_import
from fleet.installed import installed_provider
from fleet.models import Device, DeviceGroup, Site
from fleet.selectors import group_members
from fleet.services import (
    DynamicGroupMembership,
    device_create,
    device_delete,
    device_issue_credentials,
    device_revoke,
    device_update,
    group_add_members,
    group_create,
    group_delete,
    group_remove_members,
    group_update,
    site_create,
    site_delete,
    site_update,
)

from .serializers import (
    CredentialsSerializer,
    DeviceSerializer,
    GroupSerializer,
    ImportInputSerializer,
    ImportReportSerializer,
    MembersInputSerializer,
    RevokeInputSerializer,
    SiteSerializer,
    device_list_rows,
)


def actor_of(request: Request) -> Actor:
    return Actor.for_user(request.user)


class SiteViewSet(viewsets.ModelViewSet):
    queryset = Site.objects.annotate(device_count=Count("devices")).order_by("name")
    serializer_class = SiteSerializer
    filterset_fields = ["region"]
    search_fields = ["name", "region"]
    ordering_fields = ["name", "region"]

    def perform_create(self, serializer: SiteSerializer) -> None:  # type: ignore[override]
        created = site_create(actor=actor_of(self.request), **serializer.validated_data)
        serializer.instance = self.get_queryset().get(pk=created.pk)  # with device_count, as every read has it

    def perform_update(self, serializer: SiteSerializer) -> None:  # type: ignore[override]
        site_update(actor=actor_of(self.request), site=serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance: Site) -> None:
        try:
            site_delete(actor=actor_of(self.request), site=instance)
        except ProtectedError:
            raise Conflict(f"site {instance.name!r} still has devices; move or delete them first") from None


# `GET /devices/{id}/history/` is deployments' (deployments/api/views.py, DeviceHistoryViewSet): it reads
# installations and jobs, a layer above fleet. (A comment: drf-spectacular shows the docstring below.)
class DeviceViewSet(viewsets.ModelViewSet):
    """The inventory. Reads for every role; changes, credentials and imports for admins."""

    queryset = Device.objects.with_inventory()
    serializer_class = DeviceSerializer
    filterset_class = DeviceFilter
    ordering_fields = ["uid", "name", "last_seen", "memory_mb", "tier"]
    ordering = ["uid"]

    def perform_create(self, serializer: DeviceSerializer) -> None:  # type: ignore[override]
        serializer.instance = device_create(actor=actor_of(self.request), **serializer.to_service_kwargs())

    def perform_update(self, serializer: DeviceSerializer) -> None:  # type: ignore[override]
        serializer.instance = device_update(
            actor=actor_of(self.request), device=serializer.instance, **serializer.to_service_kwargs()
        )

    def perform_destroy(self, instance: Device) -> None:
        device_delete(actor=actor_of(self.request), device=instance)

    def get_queryset(self) -> QuerySet[Device]:
        if self.action == "list":
            # rows as dicts of the columns the list shows; `list` below adds their related rows
            return Device.objects.listing()  # type: ignore[return-value]
        # `installed` in one query for the page, not one per device
        return installed_provider().with_current(super().get_queryset())

    def list(self, request: Request, *args: object, **kwargs: object) -> Response:
        # DeviceSerializer's output for a page, built from plain rows (device_list_rows), not by the
        # serializer's fields: the same bytes for a fraction of the CPU (docs/benchmarks.md). A comment,
        # not a docstring: drf-spectacular would make a docstring the operation's description.
        devices = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(devices)
        if page is None:
            return Response(device_list_rows(devices))
        return self.get_paginated_response(device_list_rows(page))

    @extend_schema(request=None, responses={201: CredentialsSerializer})
    @action(detail=True, methods=["post"])
    def credentials(self, request: Request, pk: str | None = None) -> Response:
        """Issue or rotate the device's MQTT secret. The secret is in this response only."""
        issued = device_issue_credentials(actor=actor_of(request), device=self.get_object())
        body = {
            "device": issued.device.pk,
            "username": issued.username,
            "secret": issued.secret,
            "rotated": issued.rotated,
            "mqtt_url": settings.MQTT_PUBLIC_URL,
        }
        response = Response(CredentialsSerializer(body).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(request=RevokeInputSerializer, responses={200: DeviceSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        payload = RevokeInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        device = device_revoke(actor=actor_of(request), device=self.get_object(), **payload.validated_data)
        return Response(DeviceSerializer(Device.objects.with_inventory().get(pk=device.pk)).data)

    @extend_schema(
        responses={(200, "text/csv"): OpenApiTypes.STR},
        description="Every device matching the list's filters as CSV, in the import's format "
        '(`POST /api/v1/devices/import/` reads it back as it is; README, "Device CSV").',
    )
    @action(detail=False, methods=["get"], url_path="export", renderer_classes=[JSONRenderer, CSVRenderer])
    def export(self, request: Request) -> StreamingHttpResponse:
        devices = self.filter_queryset(Device.objects.with_inventory().order_by("uid"))
        response = StreamingHttpResponse(device_csv_lines(devices), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="fogdeck-devices.csv"'
        return response

    @extend_schema(request={"multipart/form-data": ImportInputSerializer}, responses={200: ImportReportSerializer})
    @action(detail=False, methods=["post"], url_path="import", parser_classes=[MultiPartParser, FormParser])
    def import_devices(self, request: Request) -> Response:
        """Bulk create/update from CSV or JSON. Answers 200 with a report of every row, good or bad."""
        payload = ImportInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        upload = payload.validated_data["file"]
        try:
            report = devices_import(actor=actor_of(request), upload=upload, filename=upload.name or "")
        except ImportFileError as exc:
            raise ValidationError({"file": [str(exc)]}) from None
        return Response(ImportReportSerializer(report.as_dict()).data)


class GroupViewSet(viewsets.ModelViewSet):
    queryset = DeviceGroup.objects.all()
    serializer_class = GroupSerializer
    filterset_fields = ["kind"]
    ordering_fields = ["name"]

    def perform_create(self, serializer: GroupSerializer) -> None:  # type: ignore[override]
        serializer.instance = group_create(actor=actor_of(self.request), **serializer.validated_data)

    def perform_update(self, serializer: GroupSerializer) -> None:  # type: ignore[override]
        group_update(actor=actor_of(self.request), group=serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance: DeviceGroup) -> None:
        group_delete(actor=actor_of(self.request), group=instance)

    def _members_page(self, request: Request, group: DeviceGroup) -> Response:
        members: QuerySet[Device] = (
            group_members(group)
            .select_related("site", "parent")
            .prefetch_related("runtimes", "tag_links")
            .order_by("uid")
        )
        members = DeviceFilter(request.query_params, queryset=members, request=request).qs
        page = self.paginate_queryset(members)
        return self.get_paginated_response(DeviceSerializer(page, many=True).data)

    @extend_schema(methods=["GET"], responses={200: DeviceSerializer(many=True)})
    @extend_schema(
        methods=["POST", "DELETE"],
        request=MembersInputSerializer,
        responses={200: DeviceSerializer(many=True)},
    )
    @action(detail=True, methods=["get", "post", "delete"])
    def members(self, request: Request, pk: str | None = None) -> Response:
        """GET lists members (a dynamic group's filter is evaluated now); POST adds, DELETE removes."""
        group = self.get_object()
        if request.method in ("POST", "DELETE"):
            payload = MembersInputSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            devices = payload.validated_data["devices"]
            try:
                if request.method == "POST":
                    group_add_members(actor=actor_of(request), group=group, devices=devices)
                else:
                    group_remove_members(actor=actor_of(request), group=group, devices=devices)
            except DynamicGroupMembership:
                raise Conflict(f"group {group.name!r} is dynamic: its members come from its filter") from None
        return self._members_page(request, group)
