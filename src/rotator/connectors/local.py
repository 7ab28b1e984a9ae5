"""The ``local`` connector: rotator itself is the target.

For API keys, tokens and passwords that applications check against rotator. set/test/finish/
revoke have nothing to do on a target, so they succeed at once (and so are trivially idempotent).
"""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Callable
from typing import ClassVar, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pydantic import Field, model_validator

from rotator.connectors.base import (
    ConnectorConfig,
    CreateRequest,
    FinishRequest,
    RevokeRequest,
    RollbackRequest,
    SetRequest,
    Strategy,
    TestRequest,
)
from rotator.domain.secret import Secret

CLASSES = {
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digits": string.digits,
    "symbols": "!#$%&()*+,-.:;<=>?@[]^_{|}~",
}


class LocalConfig(ConnectorConfig):
    """``generator`` password|token|hex (with ``length``, ``classes``, ``exclude``, ``prefix``)
    or a private key: rsa (``bits``, default 3072) | ed25519, as PKCS#8 PEM."""

    generator: Literal["password", "token", "hex", "rsa", "ed25519"] = "password"
    length: int = Field(default=32, ge=8, le=1024)
    classes: str = "lower,upper,digits,symbols"
    exclude: str = ""
    prefix: str = Field(default="", max_length=32)
    bits: int = Field(default=3072, ge=2048, le=8192)

    @model_validator(mode="after")
    def _check_classes(self) -> LocalConfig:
        names = [c.strip() for c in self.classes.split(",") if c.strip()]
        unknown = [c for c in names if c not in CLASSES]
        if unknown or not names:
            raise ValueError(f"classes must be a comma list of {', '.join(CLASSES)}")
        if self.generator == "password":
            if len(names) > self.length:
                raise ValueError("length is shorter than the number of character classes")
            for n in names:
                if not set(CLASSES[n]) - set(self.exclude):
                    raise ValueError(f"exclude removes every character of class {n}")
        return self

    def class_alphabets(self) -> list[str]:
        names = [c.strip() for c in self.classes.split(",") if c.strip()]
        return ["".join(ch for ch in CLASSES[n] if ch not in self.exclude) for n in names]


def generate_key_pair(config: ConnectorConfig) -> bytes:
    """A PKCS#8 PEM private key. CPU-heavy for RSA: the engine runs it in a process pool."""
    assert isinstance(config, LocalConfig)
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if config.generator == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=config.bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate(config: LocalConfig) -> Secret:
    """A fresh value following the policy, from the OS CSPRNG."""
    if config.generator in ("rsa", "ed25519"):
        return Secret(generate_key_pair(config))
    if config.generator == "hex":
        return Secret(config.prefix + secrets.token_hex((config.length + 1) // 2)[: config.length])
    if config.generator == "token":
        raw = base64.urlsafe_b64encode(secrets.token_bytes(config.length)).decode().rstrip("=")
        return Secret(config.prefix + raw[: config.length])
    alphabets = config.class_alphabets()
    alphabet = "".join(alphabets)
    # One character from each class, the rest from all, then shuffled: every class is present.
    chars = [secrets.choice(a) for a in alphabets]
    chars += [secrets.choice(alphabet) for _ in range(config.length - len(chars))]
    secrets.SystemRandom().shuffle(chars)
    return Secret(config.prefix + "".join(chars))


class LocalConnector:
    kind: ClassVar[str] = "local"
    strategy: ClassVar[Strategy] = Strategy.DUAL
    config_model: ClassVar[type[ConnectorConfig]] = LocalConfig
    references: ClassVar[tuple[str, ...]] = ()  # names no other credential

    def target_key(self, config: ConnectorConfig) -> str:
        return "local"

    def offload(self, config: ConnectorConfig) -> Callable[[ConnectorConfig], bytes] | None:
        """Key pairs are made in the engine's process pool, off the event loop."""
        assert isinstance(config, LocalConfig)
        return generate_key_pair if config.generator in ("rsa", "ed25519") else None

    async def create(self, req: CreateRequest) -> Secret:
        assert isinstance(req.config, LocalConfig)
        return generate(req.config)

    async def set(self, req: SetRequest) -> None:
        return None

    async def test(self, req: TestRequest) -> None:
        return None

    async def finish(self, req: FinishRequest) -> None:
        return None

    async def revoke(self, req: RevokeRequest) -> None:
        return None

    async def rollback(self, req: RollbackRequest) -> None:
        return None
