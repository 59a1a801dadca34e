"""Webhook SSRF: where a webhook may be sent (issue 14, finding 7).

Without these checks an admin could point a webhook at loopback, private networks or the cloud metadata
address; the worker POSTed there and every role could read what answered in the delivery log.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from django.utils.html import escape

from audit.actors import Actor
from core.events import publish
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db
ADMIN = Actor.system("tests")
URL = "/api/v1/webhooks/"

REFUSED_ADDRESSES = [
    "127.0.0.1",
    "127.3.4.5",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.20",
    "169.254.169.254",  # cloud metadata
    "fe80::1",
    "fd00::1",
    "224.0.0.1",
    "ff02::1",
    "0.0.0.0",  # noqa: S104 - an address under test, not a bind
    "::",
    "100.64.0.1",  # carrier-grade NAT
    "240.0.0.1",
    "255.255.255.255",
    "::ffff:127.0.0.1",  # IPv4-mapped IPv6
    "::ffff:169.254.169.254",
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_internal_addresses_are_refused(address):
    from webhooks import destinations

    assert destinations.address_problem(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    from webhooks import destinations

    assert destinations.address_problem(ipaddress.ip_address(address)) is None


def test_an_allowed_network_lets_its_addresses_through_and_no_others(settings):
    from webhooks import destinations

    settings.WEBHOOK_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    assert destinations.address_problem(ipaddress.ip_address("10.20.3.4")) is None
    assert destinations.address_problem(ipaddress.ip_address("10.21.3.4"))
    assert destinations.address_problem(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://localhost:8000/admin/",
        "http://api.localhost/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:5432/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.5/hook",
        "http://0.0.0.0:1883/",
        "http://2130706433/",  # 127.0.0.1 as one number: the resolver reads it so
        "http://127.1/",
        "gopher://hooks.example.com/",
        "file:///etc/passwd",
        "https://user:pw@hooks.example.com/",
    ],
)
def test_the_api_refuses_internal_and_non_http_urls_with_the_field(admin_client, url):
    body = {"name": "probe", "url": url, "event_kinds": ["drift.alert"]}
    response = admin_client.post(URL, body, format="json")
    assert response.status_code == 400, response.json()
    errors = {e["field"]: e["reason"] for e in response.json()["errors"]}
    assert errors.get("url"), response.json()
    assert not WebhookSubscription.objects.exists()


def test_moving_a_subscription_to_an_internal_url_is_refused(admin_client):
    created = admin_client.post(
        URL, {"name": "ok", "url": "https://hooks.example.com/x", "event_kinds": ["drift.alert"]}, format="json"
    ).json()
    response = admin_client.patch(f"{URL}{created['id']}/", {"url": "http://169.254.169.254/"}, format="json")
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["url"]
    assert WebhookSubscription.objects.get(pk=created["id"]).url == "https://hooks.example.com/x"


def test_the_ui_form_refuses_an_internal_url(client):
    from tests.factories import make_user

    client.force_login(make_user("ui-admin", "admin"))
    body = {"name": "probe", "url": "http://127.0.0.1:9000/", "event_kinds": ["drift.alert"]}
    response = client.post("/webhooks/", body)
    assert response.status_code == 400
    assert b"loopback" in response.content
    assert not WebhookSubscription.objects.exists()


def test_the_service_refuses_too(settings):
    from webhooks import destinations

    with pytest.raises(destinations.DestinationRefused, match="link-local"):
        webhook_create(actor=ADMIN, name="x", url="http://169.254.169.254/", event_kinds=["drift.alert"])


def test_by_default_a_loopback_receiver_gets_nothing(
    receiver, settings, eager_celery, django_capture_on_commit_callbacks, operator_client
):
    """Saved while loopback was allowed, then the allowance is gone: the attempt is refused before a connect."""
    subscription = webhook_create(actor=ADMIN, name="ops", url=receiver.url, event_kinds=["drift.alert"]).subscription
    settings.WEBHOOK_ALLOWED_NETWORKS = []  # the default
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    with django_capture_on_commit_callbacks(execute=True):
        publish("drift.alert", site="Lyon")
    assert receiver.received == []
    delivery = WebhookDelivery.objects.get(subscription=subscription)
    assert delivery.status == DeliveryStatus.FAILED and delivery.response_code is None
    assert delivery.error.startswith("refused:") and "loopback" in delivery.error


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """hooks.example.test answers 127.0.0.1 to the first lookup and 127.0.0.2 to every later one (DNS
    rebinding). DNS is outside the product: faking the resolver is the only way to script it."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.example.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return lookups


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(receiver, rebinding_dns):
    """Only 127.0.0.1 is allowed (and listening): a client that looked the name up again to connect would
    reach 127.0.0.2 instead. The request still names the URL's host."""
    from webhooks import destinations

    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://hooks.example.test:{port}/hooks/fogdeck?x=1"
    destination = destinations.resolve(url)
    assert destination.address == "127.0.0.1" and destination.target == "/hooks/fogdeck?x=1"
    conn = destinations.connection(destination, timeout=5)
    try:
        conn.request("POST", destination.target, body=b"{}", headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert rebinding_dns == ["hooks.example.test"]  # one lookup, for the check
    assert receiver.received[0].headers["Host"] == f"hooks.example.test:{port}"


def test_a_name_that_resolves_to_a_refused_address_is_refused_at_send(rebinding_dns):
    from webhooks import destinations

    with pytest.raises(destinations.DestinationRefused, match="loopback"):
        destinations.resolve("http://hooks.example.test:8080/")


def test_viewers_do_not_see_delivery_errors_operators_do(
    eager_celery, settings, django_capture_on_commit_callbacks, viewer_client, operator_client, admin_client
):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    subscription = webhook_create(
        actor=ADMIN, name="closed", url="http://127.0.0.1:9/", event_kinds=["drift.alert"]
    ).subscription
    with django_capture_on_commit_callbacks(execute=True):
        publish("drift.alert", site="Lyon")
    assert WebhookDelivery.objects.get().error  # there is an error to hide
    path = f"{URL}{subscription.pk}/deliveries/"

    def errors(client: Any) -> list[str]:
        rows = client.get(path).json()["results"]
        return [rows[0]["error"], *(a["error"] for a in rows[0]["attempt_log"])]

    assert errors(viewer_client) == ["", ""]
    assert all(errors(operator_client)) and all(errors(admin_client))


def test_the_webhooks_page_hides_delivery_errors_from_viewers(
    eager_celery, settings, django_capture_on_commit_callbacks, client
):
    from tests.factories import make_user

    settings.WEBHOOK_MAX_ATTEMPTS = 1
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    webhook_create(actor=ADMIN, name="closed", url="http://127.0.0.1:9/", event_kinds=["drift.alert"])
    with django_capture_on_commit_callbacks(execute=True):
        publish("drift.alert", site="Lyon")
    error = escape(WebhookDelivery.objects.get().error)
    assert error
    client.force_login(make_user("page-viewer", "viewer"))
    assert error.encode() not in client.get("/webhooks/").content
    client.force_login(make_user("page-operator", "operator"))
    assert error.encode() in client.get("/webhooks/").content


def test_the_audit_entry_of_a_failed_delivery_carries_no_error_text(
    eager_celery, settings, django_capture_on_commit_callbacks, assert_audited
):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    subscription = webhook_create(
        actor=ADMIN, name="meta", url="https://hooks.example.com/x", event_kinds=["drift.alert"]
    ).subscription
    WebhookSubscription.objects.filter(pk=subscription.pk).update(url="http://169.254.169.254/")  # as if older
    with django_capture_on_commit_callbacks(execute=True):
        publish("drift.alert", site="Lyon")
    assert "refused" in WebhookDelivery.objects.get().error
    entry = assert_audited("webhook", subscription.pk, "webhook.delivery_failed")
    assert "error" not in entry.changes
