"""SASLprep (RFC 4013 examples) and SCRAM-SHA-256 verifier shape. Logins against a real
server are in tests/integration/test_connector_postgres.py."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from rotator.connectors._scram import saslprep, scram_sha256_verifier


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to space
        ("\u0007", None),  # prohibited control character
        ("\u0627\u0031", None),  # bidi: RandALCat not at both ends
        ("", None),
    ],
)
def test_saslprep_rfc4013_examples(given: str, expected: str | None) -> None:
    assert saslprep(given) == expected


def test_verifier_matches_the_scram_definition() -> None:
    salt = bytes(range(16))
    v = scram_sha256_verifier("pencil", salt=salt, iterations=4096)
    head, keys = v.rsplit("$", 1)
    assert head == f"SCRAM-SHA-256$4096:{base64.b64encode(salt).decode()}"
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored, server = keys.split(":")
    assert base64.b64decode(stored) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server) == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert "pencil" not in v


def test_verifiers_are_salted() -> None:
    assert scram_sha256_verifier("x") != scram_sha256_verifier("x")
