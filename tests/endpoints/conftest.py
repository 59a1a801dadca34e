from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def empty_cache() -> Any:
    """Each test starts with no cached answers (the test database is rolled back, the cache is not)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def trusted_test_hosts(settings: Any) -> None:
    """The tests' devices advertise http://<uid>.test:8600/infer: an admin-approved pattern for them."""
    settings.ENDPOINTS_TRUSTED_INFERENCE_HOSTS = ["{uid}.test"]
