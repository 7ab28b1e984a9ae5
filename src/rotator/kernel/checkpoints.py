"""Signed audit checkpoints over the kernel's store and keys (see rotator.audit.checkpoints).

The signing key is derived from the committed master key (crypto.signing), like the audit
key; nothing private is stored. A checkpoint is made in its own write transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection

from rotator.audit import checkpoints as audit_cp
from rotator.crypto.signing import SigningKey, audit_signing_key
from rotator.domain.principal import Principal
from rotator.store import keys as store_keys

if TYPE_CHECKING:
    from rotator.kernel.core import Kernel


def signing_key(kernel: Kernel, conn: Connection) -> SigningKey:
    """The signing key of the store's committed master key (held by this process)."""
    master = store_keys.get_meta(conn, "master")
    committed = master["id"] if master else kernel.ring.current_id
    return audit_signing_key(kernel.ring.get(committed))


def make(
    kernel: Kernel, principal: Principal, *, only_if_new: bool = False
) -> audit_cp.Checkpoint | None:
    """Sign a checkpoint of the whole chain (incrementally) and audit it, in one transaction;
    see :func:`rotator.audit.checkpoints.make` for ``only_if_new`` and the errors."""
    keys = kernel.audit_keys  # loaded outside the write transaction
    with kernel.db.write() as conn:
        return audit_cp.make(
            conn,
            keys=keys,
            signer=signing_key(kernel, conn),
            now=kernel.clock(),
            tenant=principal.tenant,
            actor=principal.name,
            only_if_new=only_if_new,
        )
