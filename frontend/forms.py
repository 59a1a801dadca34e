from __future__ import annotations

from django import forms

from fleet.models import DeviceGroup, GroupKind
from models_registry.models import ArtifactFormat, Framework


class BulkDeviceForm(forms.Form):
    """What the device list's bulk bar posts: the ticked devices and one action."""

    ACTIONS = (("tag", "Add tag"), ("group", "Add to group"))
    action = forms.ChoiceField(choices=ACTIONS)
    devices = forms.TypedMultipleChoiceField(coerce=int, choices=())  # filled with the posted ids, checked below
    tag = forms.RegexField(regex=r"^[\w.:-]{1,64}$", required=False)
    group = forms.ModelChoiceField(queryset=DeviceGroup.objects.filter(kind=GroupKind.STATIC), required=False)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        posted = self.data.getlist("devices") if hasattr(self.data, "getlist") else []
        self.fields["devices"].choices = [(value, value) for value in posted]  # type: ignore[attr-defined]

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if data.get("action") == "tag" and not data.get("tag"):
            self.add_error("tag", "Enter a tag (letters, digits, '.', '_', ':' or '-').")
        if data.get("action") == "group" and not data.get("group"):
            self.add_error("group", "Choose a static group.")
        return data


class VersionUploadForm(forms.Form):
    artifact = forms.FileField()
    format = forms.ChoiceField(choices=ArtifactFormat.choices)
    framework = forms.ChoiceField(choices=Framework.choices)
    label = forms.CharField(max_length=64, required=False)
    runtime = forms.CharField(max_length=40, required=False)
    min_runtime_version = forms.CharField(max_length=40, required=False)
    min_memory_mb = forms.IntegerField(min_value=1, required=False)
