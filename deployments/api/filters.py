from __future__ import annotations

import django_filters

from deployments.models import Job, JobKind, JobStatus


class DeploymentFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=JobStatus.choices)
    kind = django_filters.ChoiceFilter(choices=JobKind.choices)
    device = django_filters.NumberFilter(field_name="device_id")
    version = django_filters.NumberFilter(field_name="version_id")
    model = django_filters.NumberFilter(field_name="model_id")

    class Meta:
        model = Job
        fields = ["status", "kind", "device", "version", "model"]
