from __future__ import annotations

import django_filters

from core.filters import IntFilter, UTCIsoDateTimeFilter
from deployments.models import Job, JobKind, JobStatus


class DeploymentFilter(django_filters.FilterSet):  # type: ignore[misc]  # django-filter has no types
    """Jobs by what they install, where, for which rollout and wave, in which state and when
    (AWS `list-job-executions-for-job --status FAILED`). Each filter is one indexed or joined column."""

    status = django_filters.MultipleChoiceFilter(choices=JobStatus.choices, help_text="repeat for several")
    kind = django_filters.ChoiceFilter(choices=JobKind.choices)
    device = IntFilter(field_name="device_id")
    device_uid = django_filters.CharFilter(field_name="device__uid", help_text="the device's uid")
    site = IntFilter(field_name="device__site_id", help_text="jobs of devices at this site id")
    version = IntFilter(field_name="version_id")
    model = IntFilter(field_name="model_id")
    rollout = IntFilter(field_name="rollout_id", help_text="jobs sent by this rollout id")
    wave = IntFilter(field_name="wave__index", help_text="the wave's index in its rollout (0 = first wave)")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    finished_after = UTCIsoDateTimeFilter(field_name="finished_at", lookup_expr="gte")
    finished_before = UTCIsoDateTimeFilter(field_name="finished_at", lookup_expr="lt")

    class Meta:
        model = Job
        fields = [
            "status",
            "kind",
            "device",
            "device_uid",
            "site",
            "version",
            "model",
            "rollout",
            "wave",
            "created_after",
            "created_before",
            "finished_after",
            "finished_before",
        ]
