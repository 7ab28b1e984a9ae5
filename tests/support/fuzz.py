"""Hypothesis profiles of the fuzzing suite (tests/fuzz) and the settings its tests use.

Two profiles, registered when this module is imported (tests/fuzz/conftest.py imports it, so
``--hypothesis-profile`` finds them):

``ci``    the default in the test suite: few examples, derandomized (the same examples on
          every run, so a failure in CI reproduces), bounded time per example.
``long``  many examples (``ROTATOR_FUZZ_EXAMPLES``, default 5000 per parser test; tests that
          cost a process or a request take a fraction), random, no deadline: the long run
          (docs/testing.md), selected with ``ROTATOR_FUZZ=long`` or
          ``pytest tests/fuzz --hypothesis-profile=long``.

The profile is applied per test (``fuzz_settings``), not loaded globally: the rest of the
suite keeps its own Hypothesis settings when tests/fuzz runs with it.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping, Sequence
from unittest import mock

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rotator.cli.main import main
from tests.integration.test_cli_bad_input import Run

FUZZ_ENV = "ROTATOR_FUZZ"
EXAMPLES_ENV = "ROTATOR_FUZZ_EXAMPLES"  # the long profile's examples per parser test
CI_EXAMPLES = 60
LONG_EXAMPLES = int(os.environ.get(EXAMPLES_ENV) or 5000)

settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    derandomize=True,
    deadline=None,  # a loaded CI machine must not turn a slow example into a failure
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES,
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def profile_name() -> str:
    """``long`` when asked for (environment or ``--hypothesis-profile=long``), else ``ci``."""
    if os.environ.get(FUZZ_ENV, "").strip().lower() == "long":
        return "long"
    if settings.get_current_profile_name() == "long":
        return "long"
    return "ci"


def is_long() -> bool:
    return profile_name() == "long"


def fuzz_settings(weight: float = 1.0) -> settings:
    """The selected profile, with ``weight`` times its examples (at least 1): a test whose
    example costs a CLI call or an HTTP round trip takes a fraction of a parser's."""
    base = settings.get_profile(profile_name())
    return settings(base, max_examples=max(1, round(base.max_examples * weight)))


# Pieces that broke parsers somewhere, some time: quoting, terminators, control and escape
# characters, bidi overrides, lone surrogates (surrogateescape'd bytes), digits that are not
# ASCII (Arabic-Indic, fullwidth, superscript), separators of the grammars themselves.
HOSTILE_PIECES = [
    "'", '"', "\\", "`", "\x00", "\n", "\r\n", "\t", "\x1b[31m", "\x1b]0;x\x07", "\u202e",
    "\udcff", "\ud800", "\ufeff", "\u00a0", "\u0663", "\uff11", "\u00b2",
    "\u00b9\u2070", "\U0001d7d7", "-", "+", "0x",
    "1e400", "nan", "inf", "%", "$value", "${x}", ";", "--", "/*", "=", ",", ":", "/", "*",
    "..", "../", "%2e%2e", " ", "", "9" * 30, "9" * 5000,
]  # fmt: skip
piece = st.sampled_from(HOSTILE_PIECES)


@st.composite
def spliced(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """``base`` text with up to three hostile pieces inserted at drawn positions."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(piece) + text[at:]
    return text


def hostile(*valid: str) -> st.SearchStrategy[str]:
    """Arbitrary text, hostile pieces alone and joined, and near-valid text: strings matching
    the ``valid`` patterns with hostile pieces spliced in."""
    options: list[st.SearchStrategy[str]] = [
        st.text(max_size=40),
        piece,
        st.lists(piece, min_size=1, max_size=6).map("".join),
    ]
    options += [spliced(st.from_regex(p, fullmatch=True)) for p in valid]
    options += [st.from_regex(p, fullmatch=True) for p in valid]
    return st.one_of(options)


def run_in_process(argv: Sequence[str], env: Mapping[str, str], stdin: bytes) -> Run:
    """``rotator ARGV`` through ``main`` here, with streams that encode like a process's."""
    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="backslashreplace", write_through=True)
    inp = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    with (
        mock.patch.dict(os.environ, dict(env), clear=True),
        mock.patch.object(sys, "stdout", out),
        mock.patch.object(sys, "stderr", err),
        mock.patch.object(sys, "stdin", inp),
    ):
        code = main(list(argv))
    out.flush()
    err.flush()
    return Run(
        tuple(argv),
        code,
        out_b.getvalue().decode("utf-8", "replace"),
        err_b.getvalue().decode("utf-8", "replace"),
    )
