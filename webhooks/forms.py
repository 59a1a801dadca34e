from __future__ import annotations

from django import forms

from .models import EVENT_KINDS


class SubscriptionForm(forms.Form):
    name = forms.CharField(max_length=120)
    url = forms.URLField(max_length=500, assume_scheme="https", help_text="receives a signed POST per event")
    event_kinds = forms.MultipleChoiceField(
        choices=[(kind, kind) for kind in EVENT_KINDS], widget=forms.CheckboxSelectMultiple
    )

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        if not url.startswith(("http://", "https://")):
            raise forms.ValidationError("must be an http:// or https:// URL")
        return url
