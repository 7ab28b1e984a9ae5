"""The fuzzing suite: hostile input at every place it enters rotator.

Importing tests.support.fuzz registers the ``ci`` (default) and ``long`` Hypothesis profiles;
see docs/testing.md for the long run.
"""

from __future__ import annotations

import tests.support.fuzz  # noqa: F401  (registers the profiles)
