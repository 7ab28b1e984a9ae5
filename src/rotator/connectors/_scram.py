"""SCRAM-SHA-256 verifiers computed on the client, so a plaintext password never reaches the
PostgreSQL server or its logs.

Written by hand because neither psycopg nor another maintained library exposes it; it follows
PostgreSQL's own pg_be_scram_build_secret(): SASLprep the password (RFC 4013; a password
SASLprep rejects is used as its raw UTF-8 bytes, as the server does), PBKDF2-HMAC-SHA-256
with a random 16-byte salt and 4096 iterations.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata

ITERATIONS = 4096

_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,
)


def saslprep(password: str) -> str | None:
    """The SASLprep form of ``password``, or None where SASLprep rejects it."""
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)
    )
    s = unicodedata.normalize("NFKC", mapped)
    if not s:
        return None
    if any(check(c) for c in s for check in _PROHIBITED):
        return None
    if any(stringprep.in_table_d1(c) for c in s) and (
        any(stringprep.in_table_d2(c) for c in s)
        or not (stringprep.in_table_d1(s[0]) and stringprep.in_table_d1(s[-1]))
    ):
        return None
    return s


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` for ``password``."""
    prepped = saslprep(password)
    raw = (prepped if prepped is not None else password).encode()
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", raw, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
