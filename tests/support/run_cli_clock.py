"""Run the real rotator CLI (with the test-double connector) under libfaketime, whose wall
clock the test moves while the process runs (tests/faults/test_clock_jump.py).

libfaketime 0.9.10 with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (only the wall clock jumps, as an
NTP step does) makes ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` fail with EINVAL, and
CPython's ``time.sleep`` uses exactly that call; asyncio, ``select`` and lock/condition waits
are unaffected. So ``time.sleep`` is replaced here by a ``select``-based sleep of the same
length. Nothing else changes: rotator reads the faked wall clock as it would the real one.
"""

from __future__ import annotations

import select
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rotator.cli.main import main
from tests.support.doubles import install


def _sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


if __name__ == "__main__":
    time.sleep = _sleep
    install()
    sys.exit(main(sys.argv[1:]))
