"""The one error tree of rotator.

Every error rotator raises on purpose derives from :class:`RotatorError`. Third-party errors are
translated where they enter (``raise StoreError(...) from exc``). Interfaces map the tree once:
the CLI to exit codes, the REST API to HTTP statuses.

No message built here or by callers may contain a secret value.
"""

from __future__ import annotations


class RotatorError(Exception):
    """Something rotator could not do."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip().splitlines()[0])

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInput(RotatorError):
    """The input is not valid."""


class NotFound(RotatorError):
    """No such object."""


class AlreadyExists(RotatorError):
    """The object exists already."""


class AuthenticationFailed(RotatorError):
    """The token is unknown, wrong, expired or revoked (the message never quotes it)."""


class PermissionDenied(RotatorError):
    """The principal may not do this (deny by default; see rotator.domain.principal)."""


class NotInitialized(RotatorError):
    """rotator is not initialized here: run `rotator init` first."""


class ConfigError(RotatorError):
    """The configuration is not usable."""


class CryptoError(RotatorError):
    """A cryptographic operation failed."""


class DecryptionError(CryptoError):
    """Decryption failed: wrong key, or the ciphertext was changed or moved."""


class IntegrityError(CryptoError):
    """Integrity check failed: the stored data was changed outside rotator."""


class MasterKeyError(CryptoError):
    """The master key is missing or unusable."""


class StoreError(RotatorError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The database cannot be reached."""


class StoreFull(StoreError):
    """The store refused a write for want of space (SQLite's disk full, PostgreSQL's 53100):
    an operation failure, not bad input; reads may still answer."""


class ConcurrentModification(StoreError):
    """Another process changed the object at the same time."""


class AuditError(RotatorError):
    """The audit log failed."""


class AuditChainBroken(AuditError):
    """The audit chain does not verify."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit entry {seq} does not verify: {reason}")
        self.seq = seq
        self.reason = reason


class AuditKeyUnavailable(AuditError):
    """This process does not hold the audit key in use (the master key was rotated since it
    started): restart it with the current master key."""


class PolicyError(InvalidInput):
    """The policy is not valid."""


class ConnectorError(RotatorError):
    """A connector failed on its target."""


class VerificationFailed(InvalidInput):
    """The connector's checks against its target failed."""


class UnknownConnector(InvalidInput):
    """No connector of that kind is installed."""


class RotationError(RotatorError):
    """A rotation failed."""


class LostOwnership(RotationError):
    """This process no longer owns the rotation: its lease ran out and another process took
    it over (or the rotation is gone). Nothing of the write that found this was committed."""

    def __init__(self, rotation_id: str) -> None:
        super().__init__(f"rotation {rotation_id} was taken over by another process")
        self.rotation_id = rotation_id
