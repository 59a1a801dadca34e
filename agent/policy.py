"""Which jobs a device accepts: the checks the agent and the simulator share, so both refuse alike.

Each check raises `JobRefused` with the status and reason the device reports.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Literal

from protocol import job_envelope, signing
from protocol.job_envelope import EnvelopeRefused, JobEnvelopeClaims
from protocol.messages import JobDocument, PipelineStageDocument

logger = logging.getLogger("fogdeck.agent.policy")

MANIFEST_FIELDS = ("model", "version", "format", "sha256", "size")
SIGNING_KEYS_PATH = "/api/v1/signing-keys/"
_MAX_KEY_PAGES = 20


class JobRefused(Exception):
    """The job ends here with `status` (REJECTED for verification and policy, FAILED otherwise)."""

    def __init__(self, status: Literal["REJECTED", "FAILED", "TIMED_OUT", "CANCELED"], reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_envelope(job: JobDocument, *, device_uid: str, keys: SigningKeys) -> JobEnvelopeClaims:
    """The control plane's signed envelope must name this job, this device, its kind, version and artifact,
    and be unexpired (protocol/job_envelope.py). Checked before anything else of the job is believed."""
    if job.envelope is None:
        raise JobRefused("REJECTED", "job has no signed envelope")
    try:
        return job_envelope.verify(job.envelope, job, device_uid=device_uid, public_key_b64=keys.public_key)
    except EnvelopeRefused as exc:
        raise JobRefused("REJECTED", str(exc)) from None


def admission_refusal(job: JobDocument) -> str | None:
    """Why a job should be dropped unqueued (None: queue it): no envelope, or an expired one.

    Both are what a control plane's stale copy looks like (a notification queued by the broker before
    the agent declared `signed_jobs`, or long before it reconnected); the `jobs/get` reply sent on every
    connect carries a fresh, signed copy of each job still active, so dropping these loses nothing.
    Any other envelope problem is left to `check_envelope`, which reports the job REJECTED.
    """
    if job.envelope is None:
        return "no signed envelope"
    try:
        claims, _, _ = job_envelope.decode(job.envelope)
        job_envelope.check_fresh(claims)
    except EnvelopeRefused as exc:
        return None if str(exc) != "job envelope expired" else str(exc)
    return None


def check_version(
    job: JobDocument, active_version: int | None, *, claims: JobEnvelopeClaims, revoked: set[int] | frozenset[int]
) -> None:
    """Never a revoked version; otherwise only a newer version than the active one of the same model,
    unless the control plane signed this job as a rollback (`claims.kind`, verified by `check_envelope`)."""
    if job.version in revoked:
        raise JobRefused("REJECTED", f"version {job.version} of {job.model} is revoked")
    if active_version is None or job.version > active_version or claims.kind == "rollback":
        return
    relation = "older than" if job.version < active_version else "not newer than"
    raise JobRefused("REJECTED", f"version {job.version} is {relation} active version {active_version}")


# check_artifact, check_manifest, check_signature and verify_download take a single-model job or, in the
# simulator, one stage of a pipeline job (each stage carries its own artifact and signed manifest)
Signed = JobDocument | PipelineStageDocument


def check_artifact(job: Signed, size: int, sha256: str) -> None:
    if sha256 != job.sha256:
        raise JobRefused("REJECTED", f"sha256 mismatch: expected {job.sha256}, got {sha256}")
    if size != job.size:
        raise JobRefused("REJECTED", f"size mismatch: expected {job.size} bytes, got {size}")


def check_manifest(job: Signed) -> None:
    """The signed manifest must describe exactly the artifact and version the job asks for."""
    try:
        manifest = json.loads(job.manifest)
    except ValueError:
        raise JobRefused("REJECTED", "manifest is not JSON") from None
    if not isinstance(manifest, dict):
        raise JobRefused("REJECTED", "manifest is not a JSON object")
    for field in MANIFEST_FIELDS:
        expected = getattr(job, field)
        if field not in manifest:
            raise JobRefused("REJECTED", f"manifest has no {field}")
        value = manifest[field]
        # bool is an int in Python; a manifest saying `"version": true` is not version 1.
        if value != expected or type(value) is not type(expected):
            raise JobRefused("REJECTED", f"manifest {field} {value!r} does not match the job's {expected!r}")


def check_signature(job: Signed, public_key_b64: str | None) -> None:
    if public_key_b64 is None:
        raise JobRefused("REJECTED", f"unknown signing key {job.key_id}")
    if not signing.verify(public_key_b64, job.manifest, job.signature):
        raise JobRefused("REJECTED", f"signature does not verify with key {job.key_id}")


def verify_download(job: Signed, size: int, sha256: str, keys: SigningKeys) -> None:
    """Everything `verifying` checks, in order: the bytes, the signature, then what the manifest says."""
    check_artifact(job, size, sha256)
    check_signature(job, keys.public_key(job.key_id))
    check_manifest(job)


Fetch = Callable[[str], Any]


def _fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the URL is our --api, http(s) only)
        return json.load(response)


class SigningKeys:
    """Public keys by key id from `{api}/api/v1/signing-keys/`, cached; refetched once for an unknown id.

    The list may be a JSON array or a paginated `{"results": [...], "next": url}`; each key needs
    `key_id` and `public_key` (base64 of the raw 32 bytes). A key whose id does not match its own
    bytes, or that is marked revoked, is ignored.
    """

    def __init__(self, api_url: str, *, fetch: Fetch = _fetch_json) -> None:
        self._url = api_url.rstrip("/") + SIGNING_KEYS_PATH
        self._fetch = fetch
        self._keys: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def public_key(self, key_id: str) -> str | None:
        with self._lock:
            if key_id not in self._keys or not self._loaded:
                self._refresh()
            return self._keys.get(key_id)

    def _refresh(self) -> None:
        keys: dict[str, str] = {}
        url: str | None = self._url
        for _ in range(_MAX_KEY_PAGES):
            if url is None:
                break
            if not url.startswith(("http://", "https://")):
                raise JobRefused("FAILED", f"signing keys: refusing to follow {url[:100]!r}")
            try:
                body = self._fetch(url)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise JobRefused("FAILED", f"could not fetch signing keys from {self._url}: {exc}") from None
            items, url = (body.get("results"), body.get("next")) if isinstance(body, dict) else (body, None)
            for item in items if isinstance(items, list) else []:
                parsed = _key_entry(item)
                if parsed is not None:
                    keys[parsed[0]] = parsed[1]
        self._keys = keys
        self._loaded = True


def _key_entry(item: object) -> tuple[str, str] | None:
    if not isinstance(item, dict):
        return None
    if item.get("revoked") is True or item.get("revoked_at") or item.get("is_active") is False:
        return None
    key_id, public = item.get("key_id"), item.get("public_key") or item.get("public_key_b64")
    if not isinstance(key_id, str) or not isinstance(public, str):
        return None
    try:
        raw = base64.b64decode(public, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32 or signing.key_id(raw) != key_id:
        logger.warning("ignoring signing key %r: its id does not match its bytes", key_id)
        return None
    return key_id, public
