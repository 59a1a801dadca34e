"""Schemathesis against the API's own OpenAPI schema (served at /api/v1/schema/), in-process through the
WSGI application, as an operator: no request may cause a 5xx, and every response — errors included —
must match what the schema says (status code, content type, body). Bounded to a few examples per
operation so the whole run stays well under a minute. Nothing is excluded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.factories import DeviceFactory, SiteFactory, make_user

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = 4
EXCLUDED_CHECKS = [
    # A schema cannot say which ids exist: a schema-valid request naming a device, version or site that
    # does not exist is rightly refused with a 400 naming the field (asserted by the API tests).
    positive_data_acceptance,
    # django-filter treats an empty query value (`?until=`) as "no filter" on every list, as documented
    # for django-filter; the schema's `format: date-time` cannot say that an empty value means "absent".
    negative_data_rejection,
]


@pytest.fixture
def operator_token(db: Any) -> str:
    # something to find behind the small ids the generator tries first
    SiteFactory()
    DeviceFactory()
    return Token.objects.create(user=make_user("fuzz-operator", "operator")).key


@pytest.fixture(autouse=True)
def keep_the_test_connection() -> Any:
    """As Django's test client does: in-process requests must not close the test's connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def served_schema() -> dict[str, Any]:
    """The document /api/v1/schema/ serves (same view, same generator), fetched without a database."""
    from drf_spectacular.views import SpectacularAPIView
    from rest_framework.test import APIRequestFactory, force_authenticate

    request = APIRequestFactory().get("/api/v1/schema/?format=json")
    force_authenticate(request, user=None)
    view = SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[])
    response = view(request)
    response.render()
    return json.loads(response.content)


# Examples and random fuzzing (valid and invalid data). The coverage phase (every boundary value of every
# parameter) is off: it costs minutes for 64 operations and finds nothing the fuzzing phase misses here.
CONFIG = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_dict(served_schema(), config=CONFIG)
schema.app = get_wsgi_application()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # no example database on disk: nothing is left behind
    derandomize=True,  # the same examples on every run: CI is reproducible (run with a seed to explore more)
)
def test_api_never_fails_with_5xx_and_answers_as_its_schema_says(case: Any, operator_token: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Token {operator_token}"}, excluded_checks=EXCLUDED_CHECKS)
