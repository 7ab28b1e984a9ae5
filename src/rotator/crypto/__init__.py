"""Envelope encryption recipes: ``seal``, ``open_``, ``wrap``, ``unwrap``, ``rewrap``.

AES-256-GCM, 96-bit random nonces; AAD binds tenant + credential id + version (the name is bound
to the id by the stage-map MAC, crypto.integrity). Every failure to
open raises :class:`rotator.errors.DecryptionError`. Code outside crypto/ uses only this module.
"""

from rotator.crypto.envelope import (
    DataKey,
    new_data_key_material,
    open_,
    rewrap,
    seal,
    unwrap,
    wrap,
)
from rotator.crypto.keys import (
    KdfParams,
    MasterKey,
    derive_master_key,
    read_key_file,
    replace_key_file,
    write_key_file,
)

__all__ = [
    "DataKey",
    "KdfParams",
    "MasterKey",
    "derive_master_key",
    "new_data_key_material",
    "open_",
    "read_key_file",
    "replace_key_file",
    "rewrap",
    "seal",
    "unwrap",
    "wrap",
    "write_key_file",
]
