"""`published_version` lives in tests/conftest.py (the bridge and e2e tests use it too)."""

from collections.abc import Iterator

import pytest

from tests.factories import connected_devices


@pytest.fixture(autouse=True)
def _connected_fleet() -> Iterator[None]:
    """Rollout tests run on a connected fleet (a rollout defers or replaces unreachable devices); a test
    about offline devices makes them with `DeviceFactory(connected=False)`."""
    with connected_devices():
        yield
