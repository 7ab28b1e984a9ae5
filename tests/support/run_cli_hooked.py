"""Run the real rotator CLI with one function patched to stop the process at its Nth call.

The hooks live here, in test support, never in production code. ``ROTATOR_TEST_HOOK`` holds
JSON: ``{"target": "module:attr.path", "call": N, "when": "before"|"after",
"action": "kill"|"barrier", "dir": "/path"}``.

* ``kill``: SIGKILL this process right before (or right after) the Nth call of ``target``, as a
  power cut or ``kill -9`` would: no cleanup, no ``finally``, no atexit.
* ``barrier`` (for two processes started together): at the Nth call the first process to
  arrive waits until a second one arrives or the test creates ``dir/release``; the second
  waits until ``dir/release`` exists. So the first runs on only when the second has reached
  the same point (or the test says the second never will), and the second only when the
  test lets it (after the first has exited, say).
* ``gate`` (for processes that must run a step at the same moment): each process arriving
  creates ``dir/arrived-PID`` and waits until the test creates ``dir/release`` (the test waits
  for as many ``arrived-*`` files as it started processes, then releases them together).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rotator.cli.main import main
from tests.support.doubles import install

BARRIER_TIMEOUT_S = 120.0


def _wait_for(*paths: Path) -> None:
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not any(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.01)


def _barrier(folder: Path) -> None:
    try:
        os.close(os.open(folder / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        (folder / "second").touch()
        _wait_for(folder / "release")
    else:
        _wait_for(folder / "second", folder / "release")


def _stop(hook: dict[str, Any]) -> None:
    if hook["action"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif hook["action"] == "barrier":
        _barrier(Path(hook["dir"]))
    elif hook["action"] == "gate":
        folder = Path(hook["dir"])
        (folder / f"arrived-{os.getpid()}").touch()
        _wait_for(folder / "release")
    else:
        raise SystemExit(f"unknown hook action {hook['action']!r}")


def install_hook(hook: dict[str, Any]) -> None:
    module_name, _, attr_path = hook["target"].partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original: Callable[..., Any] = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        due = calls == hook["call"]
        if due and hook.get("when", "before") == "before":
            _stop(hook)
        result = original(*args, **kwargs)
        if due and hook.get("when") == "after":
            _stop(hook)
        return result

    setattr(owner, name, hooked)


if __name__ == "__main__":
    install()
    install_hook(json.loads(os.environ["ROTATOR_TEST_HOOK"]))
    sys.exit(main(sys.argv[1:]))
