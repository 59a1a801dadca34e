from __future__ import annotations


class DeviceRevoked(Exception):
    """The device's credentials were revoked; it must be re-provisioned by an admin."""
