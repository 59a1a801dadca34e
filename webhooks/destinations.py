"""Where a webhook may be sent: public http(s) addresses only, unless WEBHOOK_ALLOWED_NETWORKS says otherwise.

A webhook URL is chosen by an admin, but the POST comes from inside the deployment (the Celery worker):
without these checks it reaches loopback services, the cloud metadata endpoint (169.254.169.254) and
private networks, and the delivery log tells its reader what answered (an internal port scanner).

* `check_url` runs when a subscription is saved (API, UI, services): scheme, host, and every address the
  host is a literal for or resolves to right now. A name that does not resolve yet is accepted there —
  DNS can change at any time anyway, so the check that counts is:
* `resolve` runs before every attempt: it resolves once, refuses if *any* address is refused (a name
  with one public and one private record is refused), and returns the address to connect to. The
  connection goes to that address (`PinnedHTTPConnection`), never to a second resolution, so a name
  that answers a public address to the check and 127.0.0.1 to the connect (DNS rebinding) gets nowhere.
  The Host header, TLS SNI and certificate check still use the URL's host name.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = {"http": 80, "https": 443}


class DestinationRefused(ValueError):
    """The URL or one of its addresses may not receive webhooks; `reason` says why, for a 400 or the log."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str  # the URL's host name (or literal), for Host, SNI and certificate checks
    port: int
    address: str  # the checked IP address the connection goes to
    target: str  # path and query, as sent in the request line


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in getattr(settings, "WEBHOOK_ALLOWED_NETWORKS", [])]


def address_problem(ip: IPAddress) -> str | None:
    """Why this address may not receive webhooks, or None. Explicitly allowed networks always pass."""
    if any(ip.version == net.version and ip in net for net in _allowed_networks()):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        # an IPv4 address dressed as IPv6 is judged as the IPv4 address it reaches
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} (as {ip})" if problem else None
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    checks: list[tuple[bool, str]] = [
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address (cloud metadata lives there)"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a globally routable address"),
    ]
    return next((f"{ip} is {kind}" for refused, kind in checks if refused), None)


def _split(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise DestinationRefused("must be an http:// or https:// URL")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise DestinationRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("credentials in the URL are not supported: the signature authenticates us")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return scheme, host, port or SCHEMES[scheme], target


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_name(host: str) -> None:
    if host == "localhost" or host.endswith(".localhost"):
        # RFC 6761: always loopback, whatever a resolver says
        problem = address_problem(ipaddress.ip_address("127.0.0.1"))
        if problem:
            raise DestinationRefused(f"{host} is loopback")


def _resolve(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # getaddrinfo may return an IPv6 address with a zone (fe80::1%eth0): the zone is not part of the address
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))


def _refuse_any(addresses: Iterable[IPAddress]) -> None:
    for ip in addresses:
        problem = address_problem(ip)
        if problem:
            raise DestinationRefused(
                f"{problem}; only public addresses receive webhooks unless WEBHOOK_ALLOWED_NETWORKS lists the network"
            )


def check_url(url: str) -> None:
    """At save: raise DestinationRefused when the URL is not http(s) or names a refused address now."""
    _scheme, host, port, _target = _split(url)
    literal = _literal(host)
    if literal is not None:
        _refuse_any([literal])
        return
    _check_name(host)
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError):
        return  # not resolvable yet: every attempt checks again before it connects
    _refuse_any(addresses)


def resolve(url: str) -> Destination:
    """Before an attempt: the checked address to connect to. Raises DestinationRefused, or OSError when the
    name does not resolve."""
    scheme, host, port, target = _split(url)
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        _check_name(host)
        try:
            addresses = _resolve(host, port)
        except UnicodeError as exc:
            raise DestinationRefused(f"invalid host name: {exc}") from None
        if not addresses:
            raise OSError(f"{host} has no address")
    _refuse_any(addresses)
    return Destination(scheme=scheme, host=host, port=port, address=str(addresses[0]), target=target)


def _pinned(address: str) -> Callable[..., socket.socket]:
    def create_connection(addr: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
        return socket.create_connection((address, addr[1]), timeout, source_address)

    return create_connection


def connection(destination: Destination, *, timeout: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection to the checked address; HTTPS verifies the certificate for the URL's host."""
    conn: http.client.HTTPConnection
    if destination.scheme == "https":
        conn = http.client.HTTPSConnection(
            destination.host, destination.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(destination.host, destination.port, timeout=timeout)
    # http.client opens its socket through this attribute: the checked address, not a new lookup
    conn._create_connection = _pinned(destination.address)  # type: ignore[attr-defined]
    return conn
