"""A real ``rotator serve`` subprocess for API tests.

``ServeProcess`` starts ``rotator serve --port 0`` (plus any arguments) with the given
environment, waits for its one ready line ``rotator: serving on URL`` on stderr and exposes
``base_url``; leaving the ``with`` block stops it with SIGTERM and kills it if it does not
end within ``stop_timeout_s``. Its stderr is kept (``stderr``) for failure messages and for
checks that nothing secret was logged.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

ROTATOR = str(Path(sys.executable).parent / "rotator")
READY = re.compile(r"rotator: serving on (\S+)")


def serve_env(home: Path, db_url: str, **extra: str) -> dict[str, str]:
    """The process environment without any inherited ``ROTATOR_*`` variable, for the store
    at ``home`` / ``db_url``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env.update(ROTATOR_HOME=str(home), ROTATOR_DB=db_url, **extra)
    return env


class ServeProcess:
    def __init__(
        self,
        env: Mapping[str, str],
        args: Sequence[str] = ("--no-scheduler",),
        *,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.env = dict(env)
        self.args = list(args)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.base_url = ""
        self._lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [ROTATOR, "serve", "--port", "0", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            while True:
                line = self._queue.get(timeout=self.start_timeout_s)
                if line is None:
                    code = self.proc.wait(timeout=self.stop_timeout_s)
                    raise RuntimeError(f"rotator serve ended (exit {code}):\n{self.stderr}")
                m = READY.search(line)
                if m:
                    self.base_url = m.group(1)
                    return self
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"rotator serve did not get ready:\n{self.stderr}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=self.stop_timeout_s)
        return self.proc.returncode

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
