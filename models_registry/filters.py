"""One FilterSet per registry list (reused by the UI lists)."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from .models import ArtifactFormat, Framework, ModelVersion, RegisteredModel, Status


class RegisteredModelFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(help_text="exact model name")
    task = django_filters.CharFilter()
    search = django_filters.CharFilter(method="filter_search", help_text="name, task or description contains")

    class Meta:
        model = RegisteredModel
        fields = ["name", "task", "search"]

    def filter_search(self, queryset: QuerySet[RegisteredModel], name: str, value: str) -> QuerySet[RegisteredModel]:
        return queryset.filter(Q(name__icontains=value) | Q(task__icontains=value) | Q(description__icontains=value))


class ModelVersionFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Status.choices)
    format = django_filters.MultipleChoiceFilter(choices=ArtifactFormat.choices)
    framework = django_filters.MultipleChoiceFilter(choices=Framework.choices)
    label = django_filters.CharFilter()

    class Meta:
        model = ModelVersion
        fields = ["status", "format", "framework", "label"]
