"""The dashboard's session: the API token in an HttpOnly cookie, and the CSRF token.

Design (docs/dashboard.md): the cookie holds the API token itself, not a server-side
session. It is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it), ``Path=/`` and ``Secure`` when the server speaks TLS. Every request authenticates
it again through ``service.access.authenticate``, the same cached path as the REST API's
bearer tokens, so a revoked or expired token ends the session exactly as it ends API access
(through this process at once, through another within the auth cache's TTL), and there is no
second secret or session table to keep. A POST must also carry the CSRF token: an HMAC of a
fixed label keyed by the session's token, so it is stateless, the same in every process,
ends with the session, and cannot be made without the token (which no page ever renders).
"""

from __future__ import annotations

import hashlib
import hmac
import re

COOKIE = "rotator_session"
CSRF_FIELD = "csrf"
_CSRF_LABEL = b"rotator dashboard csrf v1"
# Only a token that authenticated is ever set as the cookie; anything else is not sent on.
_TOKEN_SHAPE = re.compile(r"rtr_[a-z2-7]{12}_[A-Za-z0-9_-]{43}")


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session (hex); reveals nothing about the session's token."""
    return hmac.new(session_token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, given: str | None) -> bool:
    """Whether ``given`` is the session's CSRF token (compared in constant time)."""
    if not given:
        return False
    return hmac.compare_digest(csrf_token(session_token), given.encode("ascii", "replace").decode())


def cookie_token(raw: str | None) -> str | None:
    """The session token of a cookie value, or None when it has no token's shape."""
    if raw is None or not _TOKEN_SHAPE.fullmatch(raw):
        return None
    return raw
