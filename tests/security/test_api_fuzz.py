"""Schemathesis against the API's own OpenAPI schema (served at /api/v1/schema/), in-process through the
WSGI application, over every operation as each role (unauthenticated, viewer, operator, admin): no request
may cause a 5xx, and every response — errors included — must match what the schema says (status code,
content type, body). Nothing is excluded.

Bounded for CI (the suite runs twice): a role that the permission check turns away before the body is
read needs few examples to prove it is turned away; the examples go where the request reaches the code
(EXAMPLES below). Each request runs in a savepoint that is rolled back, so every example starts from the
same rows and one database error cannot poison the requests after it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "viewer", "operator", "admin")
# Examples per operation and role. Anonymous requests stop at authentication, and a viewer's reads run the
# same code as everyone's (operators and admins fuzz them) while a viewer's writes stop at the role check
# (tests/security/test_authorization_matrix.py checks those answers one by one): one example each shows
# the refusal is clean. Operators and admins reach validation, services and the database.
EXAMPLES = {"anonymous": 1, "viewer": 1, "operator": 3, "admin": 3}
EXCLUDED_CHECKS = [
    # A schema cannot say which ids exist: a schema-valid request naming a device, version or site that
    # does not exist is rightly refused with a 400 naming the field (asserted by the API tests).
    positive_data_acceptance,
    # django-filter treats an empty query value (`?until=`) as "no filter" on every list, as documented
    # for django-filter; the schema's `format: date-time` cannot say that an empty value means "absent".
    negative_data_rejection,
]


def _credentials(request: Any, role: str) -> dict[str, str]:
    """The Authorization header of the role's API client (tests/conftest.py makes those), none when anonymous."""
    # something to find behind the small ids the generator tries first
    SiteFactory()
    DeviceFactory()
    if role == "anonymous":
        return {}
    client = request.getfixturevalue(f"{role}_client")
    return {"Authorization": client._credentials["HTTP_AUTHORIZATION"]}


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
# parameter) is off: it costs minutes for the operations and finds nothing the fuzzing phase misses here.
CONFIG = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_dict(served_schema(), config=CONFIG)
schema.app = get_wsgi_application()


def _fuzz_as(role: str) -> Any:
    @schema.parametrize()
    @settings(
        max_examples=EXAMPLES[role],
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,  # no example database on disk: nothing is left behind
        derandomize=True,  # the same examples on every run: CI is reproducible (run with a seed to explore more)
    )
    def test(case: Any, request: Any) -> None:
        headers = request.node.__dict__.get("fuzz_headers")
        if headers is None:  # once per operation, not per example
            headers = request.node.fuzz_headers = _credentials(request, role)
        savepoint = transaction.savepoint()
        try:
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED_CHECKS)
        finally:
            transaction.savepoint_rollback(savepoint)

    test.__doc__ = f"Every operation, as {role}: no 5xx, and every answer as the schema says."
    return test


test_api_never_fails_with_5xx_and_answers_as_its_schema_says_anonymous = _fuzz_as("anonymous")
test_api_never_fails_with_5xx_and_answers_as_its_schema_says_viewer = _fuzz_as("viewer")
test_api_never_fails_with_5xx_and_answers_as_its_schema_says_operator = _fuzz_as("operator")
test_api_never_fails_with_5xx_and_answers_as_its_schema_says_admin = _fuzz_as("admin")
