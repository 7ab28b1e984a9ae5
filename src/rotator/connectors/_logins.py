"""A database login held in a credential's value: JSON ``{"username", "password"}`` or a bare
password of the configured user. Shared by the SQL connectors (postgres, mariadb)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rotator.connectors.base import PermanentError
from rotator.domain.secret import Secret


@dataclass(frozen=True)
class Login:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Login(username={self.username!r}, password='***')"


def parse_login(
    value: Secret, default_user: str, what: str = "the value", *, server: str = ""
) -> Login:
    """A value as a login: JSON with username/password, or a bare password. PermanentError
    (quoting nothing of the value) when it is not UTF-8 text or holds a NUL (``server``, if
    given, is named as what cannot take one)."""
    try:
        text = value.reveal_text()
    except UnicodeDecodeError:
        raise PermanentError(f"{what} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("password"), str):
        login = Login(str(data.get("username") or default_user), data["password"])
    else:
        login = Login(default_user, text)
    if "\x00" in login.password or "\x00" in login.username:
        which = f", which {server} cannot take" if server else ""
        raise PermanentError(f"{what} holds a NUL character{which}")
    return login
