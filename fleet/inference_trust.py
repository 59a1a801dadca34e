"""Which advertised inference URLs resolve may hand to applications.

A device reports its own `inference_url`; a compromised device could name any host (another device's,
or one the attacker runs) and receive applications' inference inputs. The control plane serves the URL
only when its host is the one an admin set for that device (`Device.inference_host`) or matches an
admin-approved pattern (`ENDPOINTS_TRUSTED_INFERENCE_HOSTS`, `{uid}` standing for the device's uid as a
DNS label). Anything else is stored as reported but not served; the report is counted and logged.
The rule is the fleet's (it judges a device's own report); endpoints/ applies it when it resolves.
"""

from __future__ import annotations

import fnmatch
import re
import urllib.parse

from django.conf import settings

_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]")


def uid_label(uid: str) -> str:
    """The device uid as a DNS label: lower case, every other character as "-" (as the simulator names hosts)."""
    return _NOT_IN_LABEL.sub("-", uid.lower())


def url_host(url: str) -> str | None:
    """The lower-case host of an http(s) URL (an IPv6 address without brackets), None if there is none."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.lower().rstrip(".")


def inference_url_refusal(*, uid: str, url: str, inference_host: str) -> str | None:
    """Why resolve must not serve `url` for device `uid` (None: it may). An empty URL is not refused."""
    if not url:
        return None
    host = url_host(url)
    if host is None:
        return "not an http(s) URL with a host"
    if inference_host and host == inference_host.lower().strip("[]").rstrip("."):
        return None
    label = uid_label(uid)
    for pattern in settings.ENDPOINTS_TRUSTED_INFERENCE_HOSTS:
        if fnmatch.fnmatchcase(host, pattern.lower().replace("{uid}", label)):
            return None
    expected = inference_host or "unset"
    return f"host {host[:100]!r} is neither the device's inference_host ({expected}) nor a trusted pattern"
