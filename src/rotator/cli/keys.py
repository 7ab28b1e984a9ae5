"""``rotator keys ...``: the master key."""

from __future__ import annotations

from rotator.cli.app import (
    keys_app,
    out,
    service,
)


@keys_app.command("rotate-master")
def keys_rotate_master() -> None:
    """Re-wrap every data key under a new master key (safe to interrupt and run again)."""
    with service() as svc:
        old, new, n = svc.rotate_master_key()
    out.print(f"master key rotated: {old} -> {new}; {n} data key(s) re-wrapped")
