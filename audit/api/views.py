from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import renderers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import AuditEntry
from core.csv_export import CSVRenderer, csv_lines

from .filters import AuditEntryFilter
from .serializers import AuditEntrySerializer

CSV_COLUMNS = AuditEntrySerializer.Meta.fields


def _csv_rows(queryset: Any) -> Iterator[str]:
    def rows() -> Iterator[list[Any]]:
        for entry in queryset.iterator(chunk_size=2000):
            row = AuditEntrySerializer(entry).data
            yield [json.dumps(row[c], sort_keys=True) if isinstance(row[c], dict) else row[c] for c in CSV_COLUMNS]

    return csv_lines(CSV_COLUMNS, rows())


class AuditEntryViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail, newest first. Readable by every role; nobody can change it."""

    queryset = AuditEntry.objects.all()
    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilter
    ordering_fields = ["id", "created_at"]
    renderer_classes = [renderers.JSONRenderer, renderers.BrowsableAPIRenderer, CSVRenderer]

    @extend_schema(
        parameters=[
            OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], description="csv streams every match")
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response | StreamingHttpResponse:  # type: ignore[override]
        if getattr(request.accepted_renderer, "format", None) == "csv":
            queryset = self.filter_queryset(self.get_queryset())
            response = StreamingHttpResponse(_csv_rows(queryset), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="fogdeck-audit.csv"'
            return response
        return super().list(request, *args, **kwargs)
