"""The ``jwks`` connector: JWT signing key pairs published as a JWK Set (strategy DUAL).

The credential's value is the private signing key (PKCS#8 PEM). Verifiers read the public
halves from a JWK Set JSON file (``publish``) that rotator rewrites atomically. Each key is
named by its RFC 7638 thumbprint (``kid``), so a key's entry is found again from the key alone
and every step is idempotent.

- create:   a new key pair for ``alg`` (ES256, RS256, EdDSA/Ed25519), made in the engine's
            process pool (see :func:`generate_signing_key`).
- set:      with ``publish_pending``, publish the pending public key now, so verifiers that
            cache the set learn it before anything is signed with it.
- test:     sign a short JWT with the pending key and verify it the way a verifier would: with
            the key found under its ``kid`` in the published set (``publish_pending``), or with
            the pending public key itself.
- finish:   the set holds the new CURRENT key and the PREVIOUS one (still valid for the grace).
- revoke:   remove that value's key from the set.
- rollback: remove the pending key from the set.

Keys in the file that rotator did not put there (another credential's, a manual one) are kept
as they are. An unreadable or altered file is never overwritten: the step fails and says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from pydantic import Field, field_validator

from rotator.connectors import _files
from rotator.connectors.base import (
    ConnectorConfig,
    CreateRequest,
    FinishRequest,
    PermanentError,
    RevokeRequest,
    RollbackRequest,
    SetRequest,
    Strategy,
    TestRequest,
    VerifyRequest,
)
from rotator.domain.secret import Secret

Alg = Literal["ES256", "RS256", "EdDSA", "Ed25519"]
TEST_TOKEN_LIFETIME_S = 60


class JwksConfig(ConnectorConfig):
    """``alg`` ES256 (default) | RS256 | EdDSA | Ed25519 (EdDSA's fully specified name, RFC 9864);
    ``publish``: absolute path of the JWK Set file verifiers read; ``publish_pending`` (default
    true): publish the new public key at set time, before it signs anything, so verifiers that
    cache the set know it by the time tokens signed with it arrive; ``publish_mode`` (default 0644);
    ``rsa_bits`` (RS256, default 3072); ``issuer`` / ``audience`` of the test token."""

    alg: Alg = "ES256"
    publish: str = Field(min_length=1)
    publish_pending: bool = True
    publish_mode: str = "0644"
    rsa_bits: int = Field(default=3072, ge=2048, le=8192)
    issuer: str = Field(default="rotator", min_length=1)
    audience: str | None = None

    @field_validator("publish")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not Path(v).is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @field_validator("publish_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        _files.parse_mode(v)
        return v


# -- keys ---------------------------------------------------------------------------------

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def generate_signing_key(config: ConnectorConfig) -> bytes:
    """A new private key for ``config.alg`` as PKCS#8 PEM.

    Top-level and picklable: the engine runs it in its process pool (RSA takes a while).
    """
    assert isinstance(config, JwksConfig)
    key: PrivateKey
    if config.alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif config.alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=config.rsa_bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(value: Secret) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(value.reveal(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PermanentError("the value is not an unencrypted PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return key
    raise PermanentError(f"unsupported key type {type(key).__name__} for a JWT signing key")


def _describe(key: PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC {key.curve.name} key"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA-{key.key_size} key"
    return "an Ed25519 key"


def _fits(key: PrivateKey, alg: str) -> bool:
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    if alg == "RS256":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048
    return isinstance(key, ed25519.Ed25519PrivateKey)


_NEEDS = {
    "ES256": "an EC P-256 key",
    "RS256": "an RSA key of 2048 bits or more",
    "EdDSA": "an Ed25519 key",
    "Ed25519": "an Ed25519 key",
}


def _natural_alg(key: PrivateKey, configured: str) -> str:
    """The alg to publish a key under: the configured one when the key fits it, else the one
    its type implies (a PREVIOUS key made before ``alg`` was changed keeps its own)."""
    if _fits(key, configured):
        return configured
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            key.curve.name, "ES256"
        )
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return "EdDSA"


def _jose_key(key: PrivateKey) -> Key:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(pem)
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(pem)
    return OKPKey.import_key(pem)


class SigningKey:
    """A private key with its kid (RFC 7638 thumbprint) and public JWK."""

    def __init__(self, value: Secret, configured_alg: str) -> None:
        self.native = _load(value)
        self.jose = _jose_key(self.native)
        self.kid = self.jose.thumbprint()
        self.alg = _natural_alg(self.native, configured_alg)

    def fits(self, alg: str) -> bool:
        return _fits(self.native, alg)

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.jose.as_dict(private=False, kid=self.kid, alg=self.alg, use="sig"))


def kid_of(value: Secret) -> str:
    """The kid under which ``value``'s public key is published (its RFC 7638 thumbprint)."""
    return SigningKey(value, "ES256").kid


# -- the published set ----------------------------------------------------------------------


def _thumbprint_of_entry(entry: dict[str, Any]) -> str | None:
    try:
        key = _import_public(entry)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    return key.thumbprint()


def _import_public(entry: dict[str, Any]) -> Key:
    kty = entry.get("kty")
    fields = {"EC": ("crv", "x", "y"), "RSA": ("n", "e"), "OKP": ("crv", "x")}.get(str(kty))
    if fields is None:
        raise ValueError(f"unsupported kty {kty!r}")
    public = {"kty": kty, **{f: entry[f] for f in fields}}
    if kty == "EC":
        return ECKey.import_key(public)
    if kty == "RSA":
        return RSAKey.import_key(public)
    return OKPKey.import_key(public)


class PublishedSet:
    """The JWK Set file: read, change by kid, write back atomically (only when changed)."""

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode

    def read(self) -> list[dict[str, Any]]:
        """The entries of the set; [] when the file does not exist yet."""
        try:
            raw = _files.read_or_none(self.path)
        except OSError as exc:
            raise _files.io_error("read JWK Set", self.path, exc) from exc
        if raw is None:
            return []
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise PermanentError(
                f"published JWK Set {self.path} is not valid JSON; not overwriting it"
            ) from None
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise PermanentError(
                f"published JWK Set {self.path} has no 'keys' list of objects; not overwriting it"
            )
        return keys

    def _write(self, keys: list[dict[str, Any]]) -> None:
        data = (json.dumps({"keys": keys}, indent=2) + "\n").encode()
        try:
            _files.atomic_write(self.path, data, self.mode)
        except OSError as exc:
            raise _files.io_error("write JWK Set", self.path, exc) from exc

    def update(self, fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        """Apply ``fn`` to the entries under the file lock; write if anything changed."""
        try:
            with _files.locked(self.path):
                before = self.read()
                after = fn([dict(k) for k in before])
                if after != before:
                    self._write(after)
        except OSError as exc:
            raise _files.io_error("update JWK Set", self.path, exc) from exc

    def find(self, kid: str) -> dict[str, Any] | None:
        return next((k for k in self.read() if k.get("kid") == kid), None)


def _ensure(
    keys: list[dict[str, Any]], wanted: list[SigningKey], path: str
) -> list[dict[str, Any]]:
    for sk in wanted:
        found = [k for k in keys if k.get("kid") == sk.kid]
        if not found:
            keys.append(sk.public_jwk())
            continue
        for entry in found:
            if _thumbprint_of_entry(entry) != sk.kid:
                raise PermanentError(
                    f"published JWK Set {path} holds a different key under kid {sk.kid!r} "
                    "(altered?); not overwriting it"
                )
    return keys


def _remove(keys: list[dict[str, Any]], kid: str) -> list[dict[str, Any]]:
    return [k for k in keys if k.get("kid") != kid]


# -- the connector --------------------------------------------------------------------------


def _cfg(config: ConnectorConfig) -> JwksConfig:
    assert isinstance(config, JwksConfig)
    return config


def _published(cfg: JwksConfig) -> PublishedSet:
    return PublishedSet(cfg.publish, _files.parse_mode(cfg.publish_mode))


def _pending_key(value: Secret, cfg: JwksConfig) -> SigningKey:
    sk = SigningKey(value, cfg.alg)
    if not sk.fits(cfg.alg):
        raise PermanentError(
            f"the key is {_describe(sk.native)} but alg {cfg.alg} needs {_NEEDS[cfg.alg]}"
        )
    return sk


def sign_test_token(sk: SigningKey, cfg: JwksConfig, subject: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": cfg.issuer,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + TEST_TOKEN_LIFETIME_S,
        "jti": secrets.token_hex(8),
    }
    if cfg.audience:
        claims["aud"] = cfg.audience
    with warnings.catch_warnings():
        # joserfc warns that "EdDSA" is deprecated (RFC 9864); it is still what most verify.
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.encode({"alg": cfg.alg, "kid": sk.kid}, claims, sk.jose, algorithms=[cfg.alg])


def verify_test_token(token: str, public: Key, cfg: JwksConfig) -> None:
    """Raises PermanentError when ``token`` does not verify with ``public`` or its claims."""
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": cfg.issuer},
        "exp": {"essential": True},
    }
    if cfg.audience:
        options["aud"] = {"essential": True, "value": cfg.audience}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            decoded = jwt.decode(token, public, algorithms=[cfg.alg])
        jwt.JWTClaimsRegistry(leeway=5, **options).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise PermanentError(
            f"a test token signed with the new key did not verify: {type(exc).__name__}"
        ) from None


class JwksConnector:
    kind: ClassVar[str] = "jwks"
    strategy: ClassVar[Strategy] = Strategy.DUAL
    # A value given or generated at `credential add` is made real through finish().
    publish_on_add: ClassVar[bool] = True
    config_model: ClassVar[type[ConnectorConfig]] = JwksConfig
    references: ClassVar[tuple[str, ...]] = ()  # names no other credential

    def host_effect(self, config: ConnectorConfig) -> str | None:
        """The JWK set is written by rotator to a path on its host."""
        return f"writes {_cfg(config).publish}"

    def target_key(self, config: ConnectorConfig) -> str:
        return f"jwks:{_cfg(config).publish}"

    def offload(self, config: ConnectorConfig) -> Callable[[ConnectorConfig], bytes] | None:
        """Key pairs are made in the engine's process pool, off the event loop."""
        return generate_signing_key

    async def create(self, req: CreateRequest) -> Secret:
        return Secret(await asyncio.to_thread(generate_signing_key, _cfg(req.config)))

    async def set(self, req: SetRequest) -> None:
        cfg = _cfg(req.config)
        sk = _pending_key(req.pending, cfg)
        if cfg.publish_pending:
            pub = _published(cfg)
            await asyncio.to_thread(pub.update, lambda keys: _ensure(keys, [sk], cfg.publish))

    async def test(self, req: TestRequest) -> None:
        cfg = _cfg(req.config)
        sk = _pending_key(req.pending, cfg)
        token = sign_test_token(sk, cfg, f"rotator:test:{req.credential}")
        public: Key
        if cfg.publish_pending:
            entry = await asyncio.to_thread(_published(cfg).find, sk.kid)
            if entry is None:
                raise PermanentError(
                    f"the new key (kid {sk.kid!r}) is not in the published JWK Set {cfg.publish}"
                )
            try:
                public = _import_public(entry)
            except (JoseError, ValueError, TypeError, KeyError):
                raise PermanentError(
                    f"the entry for kid {sk.kid!r} in {cfg.publish} is not a usable public key"
                ) from None
        else:
            public = _import_public(sk.public_jwk())
        verify_test_token(token, public, cfg)

    async def finish(self, req: FinishRequest) -> None:
        cfg = _cfg(req.config)
        wanted = [SigningKey(req.current, cfg.alg)]
        if req.previous is not None:
            wanted.append(SigningKey(req.previous, cfg.alg))
        await asyncio.to_thread(
            _published(cfg).update, lambda keys: _ensure(keys, wanted, cfg.publish)
        )

    async def revoke(self, req: RevokeRequest) -> None:
        cfg = _cfg(req.config)
        kid = kid_of(req.value)
        await asyncio.to_thread(_published(cfg).update, lambda keys: _remove(keys, kid))

    async def rollback(self, req: RollbackRequest) -> None:
        cfg = _cfg(req.config)
        kid = kid_of(req.pending)
        if req.current is not None and kid_of(req.current) == kid:
            return  # the "candidate" is the current key: it must stay published
        await asyncio.to_thread(_published(cfg).update, lambda keys: _remove(keys, kid))

    async def verify(self, req: VerifyRequest) -> None:
        """The publish directory is writable, an existing set is readable, and a given value
        is a key for ``alg`` that signs a token that verifies."""
        cfg = _cfg(req.config)
        directory = Path(cfg.publish).parent
        if not directory.is_dir():
            raise PermanentError(f"directory {directory} of publish path does not exist")
        if not await asyncio.to_thread(_writable, directory):
            raise PermanentError(f"directory {directory} of publish path is not writable")
        await asyncio.to_thread(_published(cfg).read)
        if req.current is not None:
            sk = _pending_key(req.current, cfg)
            token = sign_test_token(sk, cfg, f"rotator:verify:{req.credential}")
            verify_test_token(token, _import_public(sk.public_jwk()), cfg)


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)
