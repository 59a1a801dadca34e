from __future__ import annotations

import posixpath
import time
from typing import Any

import django_filters
from django.core.files.storage import default_storage
from django.core.signing import BadSignature
from django.db.models import Count, ProtectedError, QuerySet
from django.http import FileResponse, HttpRequest, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.actors import Actor
from core import roles
from core.errors import Conflict, PayloadTooLarge
from fleet.filters import DeviceFilter
from fleet.models import Device
from models_registry import keys
from models_registry.exceptions import ArtifactTooLarge, InvalidTransition
from models_registry.filters import ModelVersionFilter, RegisteredModelFilter
from models_registry.models import Alias, ModelVersion, RegisteredModel, Status
from models_registry.selectors import version_compatibility, version_history
from models_registry.services import (
    alias_delete,
    alias_set,
    download_signer,
    model_create,
    model_delete,
    model_update,
    model_version_create,
    model_version_deprecate,
    model_version_download_url,
    model_version_publish,
    model_version_revoke,
    model_version_update,
)
from models_registry.uploads import ArtifactUploadHandler

from .serializers import (
    AliasInputSerializer,
    AliasSerializer,
    CompatibilitySerializer,
    RegisteredModelSerializer,
    SigningKeySerializer,
    VersionDeprecateInputSerializer,
    VersionDetailSerializer,
    VersionRevokeInputSerializer,
    VersionSerializer,
    VersionWriteSerializer,
)


def actor_of(request: Request) -> Actor:
    return Actor.for_user(request.user)


class RegistryErrorsMixin:
    """Registry exceptions as API errors: a refused transition or edit is 409, an oversized artifact 413."""

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, InvalidTransition):
            exc = Conflict(str(exc))
        elif isinstance(exc, ArtifactTooLarge):
            exc = PayloadTooLarge(str(exc))
        return super().handle_exception(exc)  # type: ignore[misc]


class _NoFormatOverride:
    URL_FORMAT_OVERRIDE = None


class FormatIsAFilterNegotiation(DefaultContentNegotiation):
    """On version lists `?format=onnx` filters by artifact format; it must not select a renderer (DRF's default)."""

    settings = _NoFormatOverride()


MODEL_ID = OpenApiParameter("model_id", int, OpenApiParameter.PATH, description="the model's id")
ALIAS = OpenApiParameter("alias", str, OpenApiParameter.PATH, description="alias name, e.g. production")


class RegisteredModelViewSet(RegistryErrorsMixin, viewsets.ModelViewSet):
    """Registered models. Reads for every role; create, edit and delete for admins; aliases for operators."""

    queryset = RegisteredModel.objects.annotate(version_count=Count("versions")).order_by("name")
    serializer_class = RegisteredModelSerializer
    filterset_class = RegisteredModelFilter
    ordering_fields = ["name", "task", "created_at"]
    lookup_url_kwarg = "model_id"  # the same name as in the nested /models/{model_id}/versions/ routes
    write_role = roles.ADMIN
    action_roles = {"alias_set": roles.OPERATOR, "alias_delete": roles.OPERATOR}

    def perform_create(self, serializer: RegisteredModelSerializer) -> None:  # type: ignore[override]
        created = model_create(actor=actor_of(self.request), owner=self.request.user, **serializer.validated_data)
        serializer.instance = self.get_queryset().get(pk=created.pk)  # with version_count, as every read has it

    def perform_update(self, serializer: RegisteredModelSerializer) -> None:  # type: ignore[override]
        model_update(actor=actor_of(self.request), model=serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance: RegisteredModel) -> None:
        try:
            model_delete(actor=actor_of(self.request), model=instance)
        except ProtectedError:
            raise Conflict(f"model {instance.name!r} has versions; revoke them instead of deleting") from None

    @extend_schema(responses={200: AliasSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="aliases")
    def aliases(self, request: Request, **kwargs: Any) -> Response:
        model = self.get_object()
        rows = Alias.objects.filter(model=model).select_related("version").order_by("name")
        return Response(AliasSerializer(rows, many=True).data)

    @extend_schema(parameters=[ALIAS], responses={200: AliasSerializer})
    @action(detail=True, methods=["get"], url_path=r"aliases/(?P<alias>[a-z0-9][a-z0-9_-]{0,63})")
    def alias_detail(self, request: Request, alias: str = "", **kwargs: Any) -> Response:
        row = get_object_or_404(Alias.objects.select_related("version"), model=self.get_object(), name=alias)
        return Response(AliasSerializer(row).data)

    @extend_schema(parameters=[ALIAS], request=AliasInputSerializer, responses={200: AliasSerializer})
    @alias_detail.mapping.put
    def alias_set(self, request: Request, alias: str = "", **kwargs: Any) -> Response:
        """Point the alias at a published version of this model (409 for any other status). Audited."""
        model = self.get_object()
        payload = AliasInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = get_object_or_404(ModelVersion, model=model, number=payload.validated_data["version"])
        row = alias_set(actor=actor_of(request), model=model, name=alias, version=version)
        return Response(AliasSerializer(row).data)

    @extend_schema(parameters=[ALIAS], responses={204: None})
    @alias_detail.mapping.delete
    def alias_delete(self, request: Request, alias: str = "", **kwargs: Any) -> Response:
        if not alias_delete(actor=actor_of(request), model=self.get_object(), name=alias):
            raise NotFound(f"no alias {alias!r}")
        return Response(status=status.HTTP_204_NO_CONTENT)


def _device_filter_parameters() -> list[OpenApiParameter]:
    """The device list's filters, documented on the compatibility endpoint that accepts them."""
    params = []
    for name, field in DeviceFilter.base_filters.items():
        many = isinstance(field, django_filters.MultipleChoiceFilter | django_filters.ModelMultipleChoiceFilter)
        kind = OpenApiTypes.INT if isinstance(field, django_filters.NumberFilter) else OpenApiTypes.STR
        if isinstance(field, django_filters.BooleanFilter):
            kind = OpenApiTypes.BOOL
        help_text = str(field.extra.get("help_text", ""))
        params.append(OpenApiParameter(name, kind, OpenApiParameter.QUERY, many=many, description=help_text))
    return params


@extend_schema_view(
    list=extend_schema(parameters=[MODEL_ID]),
    retrieve=extend_schema(parameters=[MODEL_ID], responses={200: VersionDetailSerializer}),
    create=extend_schema(
        parameters=[MODEL_ID],
        request={"multipart/form-data": VersionWriteSerializer},
        responses={
            201: VersionDetailSerializer,
            413: OpenApiResponse(description="artifact over MAX_ARTIFACT_SIZE_MB"),
        },
    ),
    update=extend_schema(
        parameters=[MODEL_ID],
        request={"multipart/form-data": VersionWriteSerializer, "application/json": VersionWriteSerializer},
        responses={200: VersionDetailSerializer, 409: OpenApiResponse(description="only drafts can be edited")},
    ),
    partial_update=extend_schema(
        parameters=[MODEL_ID],
        request={"multipart/form-data": VersionWriteSerializer, "application/json": VersionWriteSerializer},
        responses={200: VersionDetailSerializer, 409: OpenApiResponse(description="only drafts can be edited")},
    ),
)
class ModelVersionViewSet(
    RegistryErrorsMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """A model's versions, addressed by number. Upload, edit (drafts only) and lifecycle for admins."""

    serializer_class = VersionSerializer
    filterset_class = ModelVersionFilter
    ordering_fields = ["number", "created_at", "published_at"]
    ordering = ["-number"]
    lookup_field = "number"
    lookup_value_regex = "[0-9]+"
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    content_negotiation_class = FormatIsAFilterNegotiation
    write_role = roles.ADMIN

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Before DRF parses anything: the artifact is hashed, counted and size-limited chunk by chunk.
        if request.method in ("POST", "PUT", "PATCH"):
            request.upload_handlers = [ArtifactUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    def get_model(self) -> RegisteredModel:
        if not hasattr(self, "_model"):
            self._model = get_object_or_404(RegisteredModel, pk=self.kwargs["model_id"])
        return self._model

    def get_queryset(self) -> QuerySet[ModelVersion]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no model_id in the URL
            return ModelVersion.objects.none()
        return ModelVersion.objects.with_related().prefetch_related("aliases").filter(model=self.get_model())

    def filter_queryset(self, queryset: QuerySet[ModelVersion]) -> QuerySet[ModelVersion]:
        # only the list filters versions: detail actions take other query strings (compatibility: device filters)
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    def _detail(self, version: ModelVersion) -> dict[str, Any]:
        version = self.get_queryset().get(pk=version.pk)
        version.history = version_history(version)  # type: ignore[attr-defined]
        version.deployments = []  # type: ignore[attr-defined]  # filled by the rollouts issue
        return VersionDetailSerializer(version).data

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self._detail(self.get_object()))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        model = self.get_model()
        payload = VersionWriteSerializer(data=request.data, model=model)
        payload.is_valid(raise_exception=True)
        version = model_version_create(
            actor=actor_of(request), model=model, created_by=request.user, **payload.to_service_kwargs()
        )
        return Response(self._detail(version), status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        version = self.get_object()
        if not version.is_editable:  # refuse before the body (and its artifact) is read
            raise Conflict(
                f"version {version.number} is {version.status}: only drafts can be changed; "
                "upload a new version instead"
            )
        payload = VersionWriteSerializer(
            version, data=request.data, model=version.model, updating=True, partial=kwargs.get("partial", False)
        )
        payload.is_valid(raise_exception=True)
        version = model_version_update(actor=actor_of(request), version=version, **payload.to_service_kwargs())
        return Response(self._detail(version))

    @extend_schema(parameters=[MODEL_ID], request=None, responses={200: VersionDetailSerializer})
    @action(detail=True, methods=["post"])
    def publish(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Sign and publish a draft; its artifact and metadata become immutable. Re-publishing changes nothing."""
        version = model_version_publish(actor=actor_of(request), version=self.get_object())
        return Response(self._detail(version))

    @extend_schema(
        parameters=[MODEL_ID], request=VersionDeprecateInputSerializer, responses={200: VersionDetailSerializer}
    )
    @action(detail=True, methods=["post"])
    def deprecate(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = VersionDeprecateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = model_version_deprecate(
            actor=actor_of(request), version=self.get_object(), reason=payload.validated_data["reason"]
        )
        return Response(self._detail(version))

    @extend_schema(
        parameters=[MODEL_ID], request=VersionRevokeInputSerializer, responses={200: VersionDetailSerializer}
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Revoke for good (a reason is required): never deployable again, aliases to it are removed."""
        payload = VersionRevokeInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = model_version_revoke(
            actor=actor_of(request), version=self.get_object(), reason=payload.validated_data["reason"]
        )
        return Response(self._detail(version))

    @extend_schema(
        parameters=[MODEL_ID],
        responses={
            302: OpenApiResponse(description="redirect to a time-limited artifact URL (ARTIFACT_URL_TTL_SECONDS)")
        },
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Redirect to a time-limited URL of the artifact (S3 presigned or signed by us). Audited."""
        url = model_version_download_url(actor=actor_of(request), version=self.get_object())
        return HttpResponseRedirect(url if "://" in url else request.build_absolute_uri(url))

    @extend_schema(parameters=[MODEL_ID, *_device_filter_parameters()], responses={200: CompatibilitySerializer})
    @action(detail=True, methods=["get"])
    def compatibility(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """How many devices matching the device-list filters can run this version, and why the others can't."""
        version = self.get_object()
        filterset = DeviceFilter(request.query_params, queryset=Device.objects.with_inventory(), request=request)
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        summary = version_compatibility(version, filterset.qs)
        body = {
            "compatible": summary.compatible,
            "incompatible": summary.incompatible,
            "total": summary.total,
            "reasons": summary.reasons,
        }
        return Response(CompatibilitySerializer(body).data)


class ArtifactDownloadView(APIView):
    """Serves an artifact from local storage to whoever holds an unexpired signed link (devices included).

    The token is the authorization: it names the storage key and version and carries an expiry, signed with
    a key derived from SECRET_KEY. Expired, tampered or revoked links answer 403.
    """

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    # a fleet behind one NAT downloads a rollout's artifact at once; the signed link is the limit
    throttle_classes: list[Any] = []

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 403: None})
    def get(self, request: Request, token: str) -> HttpResponseBase:
        try:
            payload = download_signer().unsign_object(token)
        except BadSignature:
            raise PermissionDenied("invalid download link") from None
        if time.time() * 1000 > payload["e"]:
            raise PermissionDenied("the download link has expired; ask the API for a new one")
        if ModelVersion.objects.filter(pk=payload["v"], status=Status.REVOKED).exists():
            raise PermissionDenied("this version was revoked")
        key = payload["k"]
        try:
            stream = default_storage.open(key, "rb")
        except FileNotFoundError:
            raise NotFound("the artifact is no longer stored") from None
        return FileResponse(
            stream, as_attachment=True, filename=posixpath.basename(key), content_type="application/octet-stream"
        )


class SigningKeysView(APIView):
    """Public keys that verify published manifests, the active one first. Old keys stay after rotation.

    Readable without credentials: these are public keys, and devices fetch them with no API token.
    """

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []  # devices fetch them unauthenticated, many from one address

    @extend_schema(responses={200: SigningKeySerializer(many=True)})
    def get(self, request: Request) -> Response:
        rows = [
            {
                "key_id": key.key_id,
                "public_key": key.public_key_b64,
                "algorithm": "ed25519",
                "active": key.active,
                "created_at": key.created_at,
            }
            for key in keys.all_keys()
        ]
        return Response(SigningKeySerializer(rows, many=True).data)
