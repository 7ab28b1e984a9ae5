"""``--max-rate``: a count of starts per period. Pure: parsing and arithmetic only.

One parser for every option that takes a rate (the worker's pacing of scheduled rotations and
a staggered rollout's cap), so both accept the same text: ``N/s``, ``N/m``, ``N/h``, or a
multiple of the unit (``N/30s``, ``N/2h``), spaces allowed around the parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rotator.errors import InvalidInput

MAX_PER_MINUTE = 1_000_000
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{0,6})\s*([smh])\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` starts per ``per_s`` seconds."""

    count: int
    per_s: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_s

    @property
    def per_minute(self) -> float:
        return self.count * 60.0 / self.per_s

    def __str__(self) -> str:
        for unit, s in sorted(_UNITS.items(), key=lambda u: -u[1]):
            if self.per_s % s == 0:
                n = int(self.per_s // s)
                return f"{self.count}/{'' if n == 1 else n}{unit}"
        return f"{self.count}/{self.per_s:g}s"


def parse_rate(text: str) -> Rate:
    """``--max-rate`` text as a :class:`Rate`: a count of at least 1 per ``s``, ``m`` or ``h``
    (or a multiple: ``10/30s``), at most 1000000 a minute. InvalidInput (one line, naming
    ``--max-rate``) otherwise."""
    m = _RATE.fullmatch(text)
    # A zero multiple in any spelling (``0``, ``00``): no period to count starts in.
    if m is None or (m.group(2) and int(m.group(2)) == 0):
        raise InvalidInput(
            f"malformed --max-rate {text[:40]!r}: expected e.g. 100/m, 2/s, 300/h or 10/30s"
        )
    rate = Rate(int(m.group(1)), int(m.group(2) or "1") * _UNITS[m.group(3)])
    if rate.count < 1:
        raise InvalidInput(f"--max-rate must be above 0, not {text.strip()!r}")
    if rate.per_minute > MAX_PER_MINUTE:
        raise InvalidInput(f"--max-rate {text.strip()!r} is too high: at most {MAX_PER_MINUTE}/m")
    return rate
