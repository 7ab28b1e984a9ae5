"""The Secret type: a value that never shows itself by accident."""

from __future__ import annotations

import hmac
from typing import Final, NoReturn


class Secret:
    """A secret value. ``repr`` and ``str`` print ``Secret('***')``; only :meth:`reveal` gives it.

    Instances are immutable and cannot be pickled (so a value does not leak into a process pool,
    a cache or a log record by accident). Equality is constant-time.
    """

    __slots__ = ("_value",)
    _value: bytes

    MASK: Final = "Secret('***')"

    def __init__(self, value: bytes | str) -> None:
        object.__setattr__(
            self, "_value", value.encode() if isinstance(value, str) else bytes(value)
        )

    def reveal(self) -> bytes:
        """The value as bytes. Call this only where the value must leave rotator."""
        return self._value

    def reveal_text(self) -> str:
        """The value as UTF-8 text (raises UnicodeDecodeError for a binary value)."""
        return self._value.decode()

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return self.MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return self.MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        raise TypeError("Secret is not hashable")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret cannot be pickled")
