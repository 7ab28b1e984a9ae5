"""Run the real rotator CLI in a subprocess with the ``recording-http`` connector installed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rotator.cli.main import main
from tests.support.recording import install

if __name__ == "__main__":
    install()
    sys.exit(main(sys.argv[1:]))
