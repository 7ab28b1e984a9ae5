"""Signed audit checkpoints over the kernel's store and keys (see rotator.audit.checkpoints).

The signing key is derived from the audit key in use (crypto.signing); nothing private is
stored, and the keys trusted are derived, never read from the store. A checkpoint is made in
its own write transaction, after the bulk of the chain was verified in a read transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotator.audit import checkpoints as audit_cp
from rotator.domain.principal import Principal

if TYPE_CHECKING:
    from rotator.kernel.core import Kernel


def public_keys(kernel: Kernel) -> dict[str, bytes]:
    """The raw public key of every signing key rotator trusts, by id: derived from every
    audit key this process holds (old ones too), never read from the store."""
    return audit_cp.trusted_keys(kernel.audit_keys)


def make(
    kernel: Kernel, principal: Principal, *, only_if_new: bool = False
) -> audit_cp.Checkpoint | None:
    """Sign a checkpoint of the whole chain (incrementally) and audit it; see
    :func:`rotator.audit.checkpoints.make` for ``only_if_new`` and the errors. The entries
    are verified and folded first in a read transaction (no lock held); the write transaction
    then does the same only for the entries appended since."""
    keys = kernel.audit_keys  # loaded outside the write transaction
    with kernel.db.read() as conn:
        snapshot = audit_cp.prepare(conn, keys=keys)
    with kernel.db.write() as conn:
        return audit_cp.make(
            conn,
            keys=keys,
            now=kernel.clock(),
            tenant=principal.tenant,
            actor=principal.name,
            only_if_new=only_if_new,
            snapshot=snapshot,
        )
