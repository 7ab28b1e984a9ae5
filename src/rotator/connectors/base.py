"""The connector protocol: how a new value is made real on a target.

One request dataclass per method, so a new field never breaks a third-party connector. Every
method must be safe to call again for the same request (a retried or resumed step must do the
right thing when it already happened).

Lifetime: a connector instance is long-lived. The engine holds ONE instance per kind for its
whole life (``registry.ConnectorSet``) and shares it between concurrent rotations on many
targets, so an instance keeps no per-call state; what it may keep are per-target resources
(connection pools, HTTP clients), keyed by target inside the instance, made lazily on first use
and released by the optional ``aclose()`` (see ``Closable``). A one-shot user
(``registry.get_connector``) calls ``aclose()`` when done.

Every request carries ``fence``: the token of the rotation's current owner (None outside a
rotation: create, revoke, verify, publishing a first value). It changes whenever another
process takes the rotation over, so a target that can check it may refuse a call carrying a
token other than the last one it saw for the credential; rotator itself never needs that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from rotator.domain.secret import Secret
from rotator.errors import ConnectorError, InvalidInput


class Strategy(enum.StrEnum):
    """How a connector keeps the service up while the value changes."""

    DUAL = "dual"  # the target holds two valid secrets at once
    ALTERNATING = "alternating"  # two accounts; rotate the idle one
    SINGLE = "single"  # one secret; a short window; not zero-downtime


class SecretResolver(Protocol):
    """Reads the CURRENT value of another credential in the same tenant (an admin secret, a CA
    key). Each read is audited. Connector configs name such credentials; they never hold a
    value themselves."""

    async def get(self, name: str) -> Secret: ...


class _NoSecrets:
    async def get(self, name: str) -> Secret:
        raise PermanentError(f"credential {name!r} cannot be read here")


NO_SECRETS: SecretResolver = _NoSecrets()


class ConnectorConfig(BaseModel):
    """Base of every connector's settings (``--set KEY=VALUE``). Holds no secret value."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class CreateRequest:
    credential: str
    version: int
    config: ConnectorConfig
    secrets: SecretResolver = NO_SECRETS
    current: Secret | None = None  # the CURRENT value, for connectors that alternate
    fence: str | None = None  # the owner's token; see the module docstring


@dataclass(frozen=True, slots=True)
class SetRequest:
    credential: str
    version: int
    config: ConnectorConfig
    pending: Secret
    current: Secret | None
    secrets: SecretResolver = NO_SECRETS
    fence: str | None = None  # the owner's token; see the module docstring


@dataclass(frozen=True, slots=True)
class TestRequest:
    credential: str
    version: int
    config: ConnectorConfig
    pending: Secret
    secrets: SecretResolver = NO_SECRETS
    fence: str | None = None  # the owner's token; see the module docstring


@dataclass(frozen=True, slots=True)
class FinishRequest:
    credential: str
    version: int
    config: ConnectorConfig
    current: Secret
    previous: Secret | None
    secrets: SecretResolver = NO_SECRETS
    fence: str | None = None  # the owner's token; see the module docstring


@dataclass(frozen=True, slots=True)
class RevokeRequest:
    credential: str
    version: int
    config: ConnectorConfig
    value: Secret
    secrets: SecretResolver = NO_SECRETS
    fence: str | None = None  # the owner's token; see the module docstring


@dataclass(frozen=True, slots=True)
class RollbackRequest:
    credential: str
    version: int
    config: ConnectorConfig
    pending: Secret
    current: Secret | None
    secrets: SecretResolver = NO_SECRETS
    fence: str | None = None  # the owner's token; see the module docstring


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """``rotator credential add --verify``: check the target before storing anything."""

    credential: str
    config: ConnectorConfig
    current: Secret | None = None
    secrets: SecretResolver = NO_SECRETS
    extra: dict[str, Any] = field(default_factory=dict)
    fence: str | None = None  # the owner's token; see the module docstring


class TransientError(ConnectorError):
    """A failure worth retrying (timeout, connection reset, 5xx)."""


class PermanentError(ConnectorError):
    """A failure that retrying will not fix (bad config, auth refused)."""


class ReferenceRefused(PermanentError):
    """The target refused the value of a referenced credential (an admin login refused).

    ``reference`` names that credential. The value read may be stale (the credential was
    rotated by another process since it was read), so the engine waits until that credential
    is not being rotated, reads it again and retries the step once before giving up."""

    def __init__(self, message: str, reference: str) -> None:
        super().__init__(message)
        self.reference = reference


@runtime_checkable
class Connector(Protocol):
    """What every connector implements. Methods must be idempotent; see module docstring."""

    kind: ClassVar[str]
    strategy: ClassVar[Strategy]
    config_model: ClassVar[type[ConnectorConfig]]

    def target_key(self, config: ConnectorConfig) -> str:
        """Which target a credential lives on (for per-target limits): e.g. ``host:port``."""
        ...

    async def create(self, req: CreateRequest) -> Secret: ...
    async def set(self, req: SetRequest) -> None: ...
    async def test(self, req: TestRequest) -> None: ...
    async def finish(self, req: FinishRequest) -> None: ...
    async def revoke(self, req: RevokeRequest) -> None: ...
    async def rollback(self, req: RollbackRequest) -> None: ...


class Closable(Protocol):
    """Optional: connectors that hold per-target resources (pools, clients) between calls.

    The contract connector authors rely on and must keep:

    - Resources are made lazily, on the first call that needs them, and keyed by target (and
      by whatever else makes them differ: TLS settings, the admin credential and a fingerprint
      of its value) inside the instance; concurrent calls on many targets share the instance.
    - ``aclose()`` releases every resource the instance holds (closes pools and clients; a
      connection still in use by a call is closed when that call returns it). It is
      idempotent, and a call made after it opens what it needs again, lazily.
    - Resources belong to the event loop that made them: an instance used from another loop
      (one ``asyncio.run`` after another) makes new ones and forgets the old ones, whose loop
      is gone.
    - A step that must prove a value (``test``) never uses a pooled connection: it logs in
      afresh with the value under test. Pools serve the admin side only.
    - No secret, nor anything derived from one (a fingerprint), appears in a resource's key
      as shown in a repr, a log line or an error message.
    """

    async def aclose(self) -> None: ...


async def aclose(connector: object) -> None:
    """Close ``connector``'s resources if it has any (``Closable``); a no-op otherwise."""
    close = getattr(connector, "aclose", None)
    if close is not None:
        await close()


class Verifiable(Protocol):
    """Optional: connectors that can check their target before a credential is added.

    ``verify`` raises PermanentError with a one-line message naming what is wrong (role
    missing, admin secret refused, host unreachable); it changes nothing on the target."""

    async def verify(self, req: VerifyRequest) -> None: ...


class SizesPools(Protocol):
    """Optional: connectors that pool connections per target take the engine's per-target
    call limit as their pools' size (pools made later use it), so a call the engine admits
    never waits for a pooled connection."""

    def set_pool_size(self, size: int) -> None: ...


class PublishesOnAdd(Protocol):
    """Optional: ``publish_on_add = True`` makes `credential add` call finish() with the first
    value (previous=None) before storing it, for targets where rotator itself puts the value
    (JWK sets, trust bundles, ACL users)."""

    publish_on_add: ClassVar[bool]


class HasReferences(Protocol):
    """Optional: ``references`` lists the names of the connector's settings whose value is the
    name of another credential in the same tenant, read through ``req.secrets`` (an admin
    password, an API token, a CA). The engine never rotates a credential while one it
    references is being rotated: a batch rotates referenced credentials first, dependants
    after them (see ``engine.ordering``). A connector without the attribute references none.
    """

    references: ClassVar[tuple[str, ...]]


def references_of(connector: Connector, config: ConnectorConfig) -> frozenset[str]:
    """Names of the credentials ``config`` references, through the connector's declared
    ``references`` settings; unset or empty settings are left out."""
    out = set()
    for setting in getattr(connector, "references", ()):
        value = getattr(config, setting, None)
        if isinstance(value, str) and value:
            out.add(value)
    return frozenset(out)


class ChecksValue(Protocol):
    """Optional: connectors that can tell, without I/O, that a value given by a user cannot be
    theirs (not UTF-8, names an account the credential does not own). ``check_value`` raises
    PermanentError with a one-line message that quotes nothing of the value."""

    def check_value(self, config: ConnectorConfig, value: Secret) -> None: ...


def check_value(connector: Connector, config: ConnectorConfig, value: Secret) -> None:
    """Check a value a user gives (``credential add/update --value-stdin``) with the
    connector's ``check_value``, if it has one; InvalidInput (one line) if it is refused."""
    check = getattr(connector, "check_value", None)
    if check is None:
        return
    try:
        check(config, value)
    except PermanentError as exc:
        raise InvalidInput(f"connector {connector.kind!r}: {exc}") from None


class ActsOnHost(Protocol):
    """Optional: connectors whose settings make rotator itself run a command or write a file on
    the host it runs on (a hook; a JWK set or a certificate published to a path). Those act
    with rotator's own OS privileges (they could read its master key or write where it may),
    so adding or changing them needs the store's owner, not a tenant grant. ``host_effect``
    says what (``runs /usr/local/bin/hook``) or None when ``config`` does neither."""

    def host_effect(self, config: ConnectorConfig) -> str | None: ...


def host_effect(connector: Connector, config: ConnectorConfig) -> str | None:
    """What ``config`` makes rotator do on its own host (see ``ActsOnHost``), or None."""
    effect = getattr(connector, "host_effect", None)
    return None if effect is None else effect(config)


class HasRotationHint(Protocol):
    """Optional: connectors whose values expire (certificates) say when to rotate next."""

    def next_rotation_hint(self, config: ConnectorConfig, value: Secret) -> datetime | None: ...


def rotation_hint(
    connector: Connector, config: ConnectorConfig, value: Secret | None
) -> datetime | None:
    """When the connector says ``value`` must be replaced (a certificate's renewal point), if
    it says so. A hint is advice: a connector error here yields None."""
    hint = getattr(connector, "next_rotation_hint", None)
    if hint is None or value is None:
        return None
    try:
        result: datetime | None = hint(config, value)
    except Exception:
        return None
    return result


def strategy_of(connector: Connector, config: ConnectorConfig) -> Strategy:
    """The strategy for this configuration (a connector may offer more than one)."""
    per_config = getattr(connector, "strategy_for", None)
    return per_config(config) if per_config is not None else connector.strategy


def parse_config(connector: Connector, settings: dict[str, str]) -> ConnectorConfig:
    """Validate ``--set`` settings against the connector's model; one-line InvalidInput if bad."""
    try:
        return connector.config_model.model_validate(settings)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        raise InvalidInput(f"connector {connector.kind!r}: {msg} {loc!r}") from None
