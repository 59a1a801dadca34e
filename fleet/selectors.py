"""Reads of the fleet that other apps use: which devices a stored filter or a group means.

They are defined in fleet/filters.py, next to `DeviceFilter` whose semantics they share (a group filter
evaluates the group's own stored filter), so that the filter set never imports this module back.
"""

from __future__ import annotations

from .filters import devices_matching, filter_to_querydict, group_members

__all__ = ["devices_matching", "filter_to_querydict", "group_members"]
