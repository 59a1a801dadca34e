"""Secrets hash to Mosquitto's `$7$` format and verify hashes Mosquitto wrote."""

from __future__ import annotations

import base64
import re

import pytest

from broker.passwords import generate_secret, hash_secret, verify_secret

# Written by `mosquitto_passwd -b` from Mosquitto 2.0.11 (12-byte salt, 101 iterations).
MOSQUITTO_VECTORS = [
    (
        "correct horse battery staple",
        "$7$101$0qu8rsU6V2C3NFZQ$L4B83QMkGwOCHac6Csx1NpKEYOnOopTBcTodwCSELHr3AjeTTqgx1BXa0//6Etp3Ve/UhB58B4ZD/Y2spAY+bQ==",
    ),
    (
        "pässwörd-ünïcode",
        "$7$101$dPzVlWdy9JmmTmIo$PpuA80FAEdhQjV6am5MKCkeOekiRF2TQgbdAc7bkaYEKxyzx11I+1jNa5SaRbOydNHiAyRvZ+ytTGw89L8bkrQ==",
    ),
]


def test_hash_has_mosquitto_layout_with_12_byte_salt_and_64_byte_key():
    encoded = hash_secret("s3cret")

    match = re.fullmatch(r"\$7\$1000\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", encoded)
    assert match is not None, encoded
    assert len(base64.b64decode(match.group(1))) == 12
    assert len(base64.b64decode(match.group(2))) == 64


def test_hash_records_the_requested_iterations():
    encoded = hash_secret("s3cret", iterations=101)

    assert encoded.startswith("$7$101$")
    assert verify_secret("s3cret", encoded)


def test_same_secret_hashes_differently_each_time():
    assert hash_secret("s3cret") != hash_secret("s3cret")


def test_verify_accepts_the_secret_and_rejects_others():
    encoded = hash_secret("s3cret")

    assert verify_secret("s3cret", encoded)
    assert not verify_secret("s3cret ", encoded)
    assert not verify_secret("S3cret", encoded)
    assert not verify_secret("", encoded)


@pytest.mark.parametrize(("secret", "encoded"), MOSQUITTO_VECTORS)
def test_verify_accepts_hashes_written_by_mosquitto_passwd(secret, encoded):
    assert verify_secret(secret, encoded)
    assert not verify_secret(secret + "x", encoded)


def test_verify_accepts_mosquitto_2_1_long_salts():
    # Mosquitto 2.1 writes 64-byte salts; a row migrated from it must still log in.
    import hashlib

    salt = bytes(range(64))
    key = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 5)
    encoded = f"$7$5${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"

    assert verify_secret("pw", encoded)


_GOOD = hash_secret("pw", iterations=2)
_SALT, _KEY = _GOOD.split("$")[3:5]


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "pw",
        "$7$",
        "$6$" + _GOOD[3:],  # another scheme
        f"$7$2${_SALT}",  # no key
        f"$7$2${_SALT}${_KEY}$extra",
        f"$7$0${_SALT}${_KEY}",  # iterations must be >= 1
        f"$7$-2${_SALT}${_KEY}",
        f"$7$two${_SALT}${_KEY}",
        f"$7$²${_SALT}${_KEY}",  # a digit to str.isdigit, not to Mosquitto
        f"$7$99999999999${_SALT}${_KEY}",  # beyond Mosquitto's int
        f"$7$2$!!notbase64!!${_KEY}",
        f"$7$2${_SALT}$!!notbase64!!",
        f"$7$2${base64.b64encode(b'short').decode()}${_KEY}",  # salt length Mosquitto refuses
        f"$7$2${_SALT}${_KEY[:-8]}==",  # truncated key
    ],
)
def test_verify_returns_false_for_malformed_hashes(encoded):
    assert verify_secret("pw", encoded) is False


def test_verify_returns_false_instead_of_raising_on_wrong_types():
    assert verify_secret(None, _GOOD) is False  # type: ignore[arg-type]
    assert verify_secret("pw", None) is False  # type: ignore[arg-type]
    assert verify_secret("pw", b"$7$") is False  # type: ignore[arg-type]


def test_nul_in_secret_is_refused_because_mosquitto_would_truncate_it():
    with pytest.raises(ValueError, match="NUL"):
        hash_secret("pw\x00tail")
    assert verify_secret("pw\x00tail", _GOOD) is False


def test_hash_refuses_non_positive_iterations():
    with pytest.raises(ValueError, match="iterations"):
        hash_secret("pw", iterations=0)


def test_generated_secrets_are_urlsafe_256_bit_and_unique():
    secrets = {generate_secret() for _ in range(50)}

    assert len(secrets) == 50
    for secret in secrets:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
