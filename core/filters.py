"""Filters shared by every FilterSet."""

from __future__ import annotations

import datetime as dt
from typing import Any

import django_filters
import django_filters.fields
from django import forms
from django_filters.fields import IsoDateTimeField


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, converted to UTC before it reaches a query.

    Python accepts offsets up to ±23:59 and years 1-9999 in any zone; PostgreSQL refuses offsets past ±15:59
    ("time zone displacement out of range", a 500 on a list filter), and a year-1 or year-9999 value can
    leave the representable range once shifted to UTC. Both are the caller's input, so they are a 400 here.
    """

    default_error_messages = {"out_of_range": "date-time out of range once converted to UTC"}

    def to_python(self, value: Any) -> dt.datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(dt.UTC)
        except (OverflowError, ValueError):
            raise forms.ValidationError(self.error_messages["out_of_range"], code="out_of_range") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


# The database's integer range: SQLite raises OverflowError (a 500) for a parameter past 64 bits.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class IntFilter(django_filters.NumberFilter):
    """A number filter on an integer column: values past the 64-bit range are a 400, not a database error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", INT64_MIN)
        kwargs.setdefault("max_value", INT64_MAX)
        super().__init__(*args, **kwargs)


class _BoundedModelMultipleChoiceField(django_filters.fields.ModelMultipleChoiceField):
    def _check_values(self, value: Any) -> Any:
        key = self.to_field_name or "pk"
        if key == "pk":
            for pk in value:
                try:
                    number = int(str(pk))
                except ValueError:
                    continue  # Django's own check names it an invalid choice
                if not INT64_MIN <= number <= INT64_MAX:
                    raise forms.ValidationError(
                        self.error_messages["invalid_pk_value"], code="invalid_pk_value", params={"pk": pk}
                    )
        return super()._check_values(value)


class IdsFilter(django_filters.ModelMultipleChoiceFilter):
    """ModelMultipleChoiceFilter whose ids past the 64-bit range are a 400, not a database error."""

    field_class = _BoundedModelMultipleChoiceField
