from __future__ import annotations

from django import forms

from fleet.models import DeviceGroup, GroupKind


class BulkDeviceForm(forms.Form):
    """What the device list's bulk bar posts: the ticked devices and one action."""

    ACTIONS = (("tag", "Add tag"), ("group", "Add to group"))
    action = forms.ChoiceField(choices=ACTIONS)
    devices = forms.TypedMultipleChoiceField(coerce=int, choices=(), required=False)  # the posted ids, checked below
    # "ticked": the ticked devices; "matching": every device the list's filters (`query`) match, on every page
    scope = forms.ChoiceField(choices=(("ticked", "ticked"), ("matching", "matching")), required=False)
    query = forms.CharField(required=False, max_length=4000)
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
