from __future__ import annotations

from django import forms

from .destinations import DestinationRefused, check_url
from .models import EVENT_KINDS


class SubscriptionForm(forms.Form):
    name = forms.CharField(max_length=120)
    url = forms.URLField(max_length=500, assume_scheme="https", help_text="receives a signed POST per event")
    event_kinds = forms.MultipleChoiceField(
        choices=[(kind, kind) for kind in EVENT_KINDS], widget=forms.CheckboxSelectMultiple
    )

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        try:
            check_url(url)
        except DestinationRefused as exc:
            raise forms.ValidationError(exc.reason) from None
        return url
