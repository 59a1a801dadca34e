from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from endpoints.exceptions import ResolveRefused
from endpoints.selectors import endpoints_resolve_cached

from .serializers import ResolutionSerializer, ResolveQuerySerializer


class ResolveView(APIView):
    """Healthy endpoints serving a model's aliased version, nearest first (any authenticated role)."""

    @extend_schema(
        parameters=[ResolveQuerySerializer], responses=ResolutionSerializer, operation_id="endpoints_resolve"
    )
    def get(self, request: Request) -> Response:
        query = ResolveQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        try:
            answer = endpoints_resolve_cached(
                model_name=data["model"],
                alias=data["alias"],
                site=data.get("site"),
                latitude=data.get("lat"),
                longitude=data.get("lon"),
            )
        except ResolveRefused as exc:
            raise ValidationError({exc.field: exc.reason}) from None
        return Response(answer)
