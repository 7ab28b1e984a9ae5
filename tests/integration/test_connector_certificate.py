"""The ``certificate`` connector: directly (no store), then through the engine on both databases."""

from __future__ import annotations

import asyncio
import ipaddress
import pickle
import stat
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification

from rotator.connectors import base as cb
from rotator.connectors import certificate as certs
from rotator.connectors.certificate import CertificateConfig, CertificateConnector
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest
from rotator.errors import InvalidInput, VerificationFailed
from rotator.service import BlockingService, PolicyInput, ValueInput

T = TypeVar("T")
FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01, retry_attempts=2)
CONN = CertificateConnector()
DAY = timedelta(days=1)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def config(**settings: Any) -> CertificateConfig:
    raw = {k: str(v) for k, v in settings.items()}
    if raw.get("key_type") == "rsa":
        raw.setdefault("rsa_bits", "2048")
    cfg = cb.parse_config(CONN, raw)
    assert isinstance(cfg, CertificateConfig)
    return cfg


@dataclass
class Vault:
    """A SecretResolver over a dict: what the engine gives a connector, without a store."""

    values: dict[str, Secret] = field(default_factory=dict)

    async def get(self, name: str) -> Secret:
        if name not in self.values:
            raise cb.PermanentError(f"referenced credential {name!r}: no credential {name!r}")
        return self.values[name]


def now() -> datetime:
    return datetime.now(UTC)


def make_ca(key_type: str = "ec", validity: str = "365d") -> Secret:
    return run(
        CONN.create(
            cb.CreateRequest(
                credential="pki/ca",
                version=1,
                config=config(
                    role="ca", common_name="Test CA", key_type=key_type, validity=validity
                ),
            )
        )
    )


LEAF = {
    "ca": "pki/ca",
    "common_name": "api.internal",
    "sans": "api.internal, *.api.internal, 10.0.0.7",
}


def make_leaf(vault: Vault, **settings: Any) -> tuple[CertificateConfig, Secret]:
    cfg = config(**{**LEAF, **settings})
    return cfg, run(
        CONN.create(cb.CreateRequest(credential="svc/tls", version=1, config=cfg, secrets=vault))
    )


def treq(cfg: CertificateConfig, value: Secret, vault: Vault) -> cb.TestRequest:
    return cb.TestRequest(credential="svc/tls", version=2, config=cfg, pending=value, secrets=vault)


# -- direct ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec", "rsa", "ed25519"])
def test_ca_is_a_self_signed_ca_that_passes_its_own_test(key_type: str) -> None:
    ca_value = make_ca(key_type)
    bundle = certs.parse_bundle(ca_value.reveal())
    assert ca_value.reveal().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert bundle.chain == []
    bc = bundle.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca
    assert bundle.cert.subject == bundle.cert.issuer
    bundle.cert.verify_directly_issued_by(bundle.cert)
    life = bundle.cert.not_valid_after_utc - now()
    assert DAY * 364 < life <= DAY * 365
    expected = {"ec": ec.EllipticCurvePrivateKey, "rsa": rsa.RSAPrivateKey}
    assert isinstance(bundle.key, expected.get(key_type, ed25519.Ed25519PrivateKey))
    cfg = config(role="ca", common_name="Test CA")
    run(CONN.test(cb.TestRequest(credential="pki/ca", version=1, config=cfg, pending=ca_value)))
    run(CONN.verify(cb.VerifyRequest(credential="pki/ca", config=cfg, current=ca_value)))


@pytest.mark.parametrize("key_type", ["ec", "rsa", "ed25519"])
@pytest.mark.parametrize("ca_key_type", ["ec", "ed25519"])
def test_leaf_is_signed_by_the_ca_with_sans_and_chain(key_type: str, ca_key_type: str) -> None:
    vault = Vault({"pki/ca": make_ca(ca_key_type)})
    cfg, value = make_leaf(vault, key_type=key_type)
    bundle = certs.parse_bundle(value.reveal())
    ca = certs.parse_bundle(vault.values["pki/ca"].reveal())
    bundle.cert.verify_directly_issued_by(ca.cert)
    assert [c.fingerprint(hashes.SHA256()) for c in bundle.chain] == [
        ca.cert.fingerprint(hashes.SHA256())
    ]
    san = bundle.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["*.api.internal", "api.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert not bundle.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = bundle.cert.not_valid_after_utc - bundle.cert.not_valid_before_utc
    assert life == DAY * 30 + timedelta(minutes=5), "30d validity plus the 5m backdate"
    run(CONN.test(treq(cfg, value, vault)))
    run(
        CONN.verify(
            cb.VerifyRequest(credential="svc/tls", config=cfg, current=value, secrets=vault)
        )
    )


def test_rotation_hint_is_at_renew_fraction_of_the_lifetime() -> None:
    vault = Vault({"pki/ca": make_ca()})
    cfg, value = make_leaf(vault, validity="30d", renew_fraction="0.5", backdate="0s")
    cert = certs.parse_bundle(value.reveal()).cert
    hint = CONN.next_rotation_hint(cfg, value)
    assert hint == cert.not_valid_before_utc + timedelta(days=15)
    cfg66, value66 = make_leaf(vault, validity="30d", backdate="0s")
    cert66 = certs.parse_bundle(value66.reveal()).cert
    assert CONN.next_rotation_hint(cfg66, value66) == cert66.not_valid_before_utc + DAY * 30 * 0.66


def test_leaf_never_outlives_its_ca() -> None:
    vault = Vault({"pki/ca": make_ca(validity="10d")})
    _, value = make_leaf(vault, validity="30d")
    leaf = certs.parse_bundle(value.reveal()).cert
    ca = certs.parse_bundle(vault.values["pki/ca"].reveal()).cert
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc


def test_expired_ca_is_refused_with_its_expiry_date() -> None:
    expired = certs.self_signed_ca_pem("Old CA", now() - DAY * 400, now() - DAY * 35)
    vault = Vault({"pki/ca": Secret(expired)})
    day = (now() - DAY * 35).strftime("%Y-%m-%d")
    with pytest.raises(cb.PermanentError, match=rf"CA 'pki/ca' expired on {day}T"):
        make_leaf(vault)
    cfg = config(**LEAF)
    with pytest.raises(cb.PermanentError, match="CA 'pki/ca' expired on"):
        run(CONN.verify(cb.VerifyRequest(credential="svc/tls", config=cfg, secrets=vault)))
    ca_cfg = config(role="ca", common_name="Old CA")
    with pytest.raises(cb.PermanentError, match="CA 'pki/ca' expired on"):
        run(
            CONN.verify(
                cb.VerifyRequest(credential="pki/ca", config=ca_cfg, current=Secret(expired))
            )
        )


def test_not_yet_valid_ca_is_refused() -> None:
    future = certs.self_signed_ca_pem("Future CA", now() + DAY, now() + DAY * 365)
    vault = Vault({"pki/ca": Secret(future)})
    with pytest.raises(cb.PermanentError, match="CA 'pki/ca' is not valid before"):
        make_leaf(vault)


def test_a_credential_that_is_not_a_ca_is_refused() -> None:
    vault = Vault({"pki/ca": make_ca()})
    _, leaf = make_leaf(vault)
    vault.values["pki/leaf-as-ca"] = leaf
    with pytest.raises(cb.PermanentError, match="'pki/leaf-as-ca' is not a CA"):
        make_leaf(vault, ca="pki/leaf-as-ca")
    vault.values["pki/garbage"] = Secret("not a pem bundle")
    with pytest.raises(cb.PermanentError, match="CA 'pki/garbage' must hold one private key"):
        make_leaf(vault, ca="pki/garbage")
    with pytest.raises(cb.PermanentError, match="referenced credential 'pki/none'"):
        make_leaf(vault, ca="pki/none")


def test_test_step_catches_what_is_wrong_with_a_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Vault({"pki/ca": make_ca()})
    cfg, value = make_leaf(vault)
    bundle = certs.parse_bundle(value.reveal())

    other_key = certs.generate_key("ec")
    swapped = Secret(certs.to_pem(other_key, bundle.cert, bundle.chain))
    with pytest.raises(cb.PermanentError, match="private key does not match"):
        run(CONN.test(treq(cfg, swapped, vault)))

    fewer = config(**{**LEAF, "sans": "api.internal"})
    with pytest.raises(cb.PermanentError, match=r"SANs .* are not the configured ones"):
        run(CONN.test(treq(fewer, value, vault)))

    renamed = config(**{**LEAF, "common_name": "other.internal"})
    with pytest.raises(cb.PermanentError, match=r"common name is not 'other\.internal'"):
        run(CONN.test(treq(renamed, value, vault)))

    stranger = Vault({"pki/ca": make_ca()})  # same name, another CA
    with pytest.raises(cb.PermanentError, match="not signed by CA 'pki/ca'"):
        run(CONN.test(treq(cfg, value, stranger)))

    later = now() + DAY * 31
    monkeypatch.setattr(certs, "utcnow", lambda: later)
    with pytest.raises(cb.PermanentError, match="the certificate expired on"):
        run(CONN.test(treq(cfg, value, vault)))


REQUESTS: dict[str, type[Any]] = {
    "set": cb.SetRequest,
    "finish": cb.FinishRequest,
    "revoke": cb.RevokeRequest,
    "rollback": cb.RollbackRequest,
}


def step(method: str, cfg: CertificateConfig, vault: Vault, **fields: Any) -> None:
    """One connector step for credential ``svc/tls`` (request fields by keyword)."""
    req = REQUESTS[method](
        credential="svc/tls", version=fields.pop("version", 2), config=cfg, secrets=vault, **fields
    )
    run(getattr(CONN, method)(req))


def test_publish_writes_the_bundle_0600_and_rollback_restores_current(tmp_path: Path) -> None:
    path = tmp_path / "tls" / "bundle.pem"
    path.parent.mkdir()
    vault = Vault({"pki/ca": make_ca()})
    cfg, current = make_leaf(vault, publish=path)
    _, pending = make_leaf(vault, publish=path)
    step("set", cfg, vault, version=1, pending=current, current=None)
    step("finish", cfg, vault, version=1, current=current, previous=None)
    assert path.read_bytes() == current.reveal()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    step("set", cfg, vault, pending=pending, current=current)
    assert path.read_bytes() == pending.reveal()
    step("rollback", cfg, vault, pending=pending, current=current)
    step("rollback", cfg, vault, pending=pending, current=current)  # idempotent
    assert path.read_bytes() == current.reveal()
    step("rollback", cfg, vault, version=1, pending=current, current=None)
    assert not path.exists(), "rolling back a first value removes what it published"
    assert list(path.parent.iterdir()) == [], "no temp files left"


def test_without_publish_set_and_revoke_touch_nothing(tmp_path: Path) -> None:
    vault = Vault({"pki/ca": make_ca()})
    cfg, value = make_leaf(vault)
    step("set", cfg, vault, pending=value, current=None)
    step("revoke", cfg, vault, version=1, value=value)
    assert list(tmp_path.iterdir()) == []


def ca_step(method: str, cfg: CertificateConfig, **fields: Any) -> None:
    req = (REQUESTS | {"test": cb.TestRequest})[method](
        credential="pki/ca", version=fields.pop("version", 2), config=cfg, **fields
    )
    run(getattr(CONN, method)(req))


def fingerprints(path: Path) -> set[bytes]:
    return {
        c.fingerprint(hashes.SHA256()) for c in x509.load_pem_x509_certificates(path.read_bytes())
    }


def fp(value: Secret) -> bytes:
    return certs.parse_bundle(value.reveal()).cert.fingerprint(hashes.SHA256())


def test_ca_trust_bundle_holds_current_and_previous_until_revoked(tmp_path: Path) -> None:
    path = tmp_path / "trust.pem"
    foreign = certs.parse_bundle(make_ca().reveal()).cert
    path.write_bytes(foreign.public_bytes(serialization.Encoding.PEM))
    cfg = config(role="ca", common_name="Test CA", trust_bundle=path)
    old, new, failed = make_ca(), make_ca(), make_ca()
    ca_step("finish", cfg, version=1, current=old, previous=None)
    ca_step("set", cfg, pending=new, current=old)
    assert b"PRIVATE" not in path.read_bytes(), "only certificates go into the trust bundle"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    ca_step("test", cfg, pending=new)
    ca_step("finish", cfg, current=new, previous=old)
    ca_step("finish", cfg, current=new, previous=old)  # idempotent
    want = {foreign.fingerprint(hashes.SHA256()), fp(old), fp(new)}
    assert fingerprints(path) == want
    ca_step("set", cfg, version=3, pending=failed, current=new)
    ca_step("rollback", cfg, version=3, pending=failed, current=new)
    assert fingerprints(path) == want
    ca_step("revoke", cfg, version=1, value=old)
    ca_step("revoke", cfg, version=1, value=old)
    assert fingerprints(path) == want - {fp(old)}, "a foreign certificate is kept"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(cb.PermanentError, match=r"trust bundle .* not overwriting it"):
        ca_step("test", cfg, pending=new)


def test_ca_test_fails_when_its_certificate_is_missing_from_the_trust_bundle(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trust.pem"
    cfg = config(role="ca", common_name="Test CA", trust_bundle=path)
    pending = make_ca()
    ca_step("set", cfg, pending=pending, current=None)
    path.write_bytes(b"")
    with pytest.raises(cb.PermanentError, match="not in the trust bundle"):
        ca_step("test", cfg, pending=pending)


def test_a_trust_bundle_holding_a_private_key_is_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "trust.pem"
    path.write_bytes(make_ca().reveal())  # key and certificate: a mistake to keep visible
    cfg = config(role="ca", common_name="Test CA", trust_bundle=path)
    with pytest.raises(cb.PermanentError, match="something other than certificates"):
        ca_step("set", cfg, pending=make_ca(), current=None)
    with pytest.raises(cb.PermanentError, match="something other than certificates"):
        run(CONN.verify(cb.VerifyRequest(credential="pki/ca", config=cfg)))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"common_name": "x"}, "a leaf needs 'ca'"),
        ({"role": "ca", "common_name": "x", "ca": "pki/ca"}, "'ca' is for role leaf only"),
        ({"common_name": "x", "ca": "c", "sans": "bad name!"}, "neither a DNS name nor an IP"),
        ({"common_name": "x", "ca": "c", "validity": "soon"}, "malformed validity"),
        ({"common_name": "x", "ca": "c", "validity": "0d"}, "longer than zero"),
        ({"common_name": "x", "ca": "c", "renew_fraction": "1.5"}, "renew_fraction"),
        ({"common_name": "x", "ca": "c", "key_type": "dsa"}, "key_type"),
        ({"common_name": "x", "ca": "c", "publish": "rel.pem"}, "absolute"),
        ({"common_name": "x", "ca": "c", "trust_bundle": "/t.pem"}, "for role ca only"),
        ({"role": "ca", "common_name": "x", "trust_bundle_mode": "9"}, "octal"),
        ({"ca": "c"}, "common_name"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        cb.parse_config(CONN, settings)


def test_offload_only_for_the_ca_and_picklable() -> None:
    ca_cfg = config(role="ca", common_name="CA", key_type="ed25519")
    fn = CONN.offload(ca_cfg)
    assert fn is certs.generate_ca
    fn2, cfg2 = pickle.loads(pickle.dumps((fn, ca_cfg)))  # noqa: S301
    assert certs.parse_bundle(fn2(cfg2)).cert.subject.rfc4514_string() == "CN=CA"
    assert CONN.offload(config(**LEAF)) is None


# -- through the engine (both databases) -----------------------------------------------------


def rotate(svc: BlockingService, names: list[str]) -> Any:
    async def go() -> Any:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate([RotationRequest(n) for n in names])

    return run(go())


def add_ca(svc: BlockingService, name: str = "pki/ca", **settings: str) -> None:
    svc.add_credential(
        name,
        "certificate",
        settings={"role": "ca", "common_name": "Internal CA", "validity": "365d", **settings},
        value=ValueInput(generate=True),
        verify=True,
    )


def add_leaf(svc: BlockingService, name: str = "svc/tls", **settings: str) -> None:
    svc.add_credential(
        name,
        "certificate",
        settings={**LEAF, "validity": "30d", **settings},
        value=ValueInput(generate=True),
        verify=True,
    )


def cert_of(value: Secret) -> x509.Certificate:
    return certs.parse_bundle(value.reveal()).cert


def test_leaf_rotates_chained_to_the_ca_with_next_rotation_from_the_hint(
    svc: BlockingService,
) -> None:
    add_ca(svc)
    add_leaf(svc)
    old = svc.get_value("svc/tls")
    assert rotate(svc, ["svc/tls"]).ok
    new = svc.get_value("svc/tls")
    assert new != old
    ca = cert_of(svc.get_value("pki/ca"))
    leaf = cert_of(new)
    leaf.verify_directly_issued_by(ca)
    assert leaf.not_valid_before_utc <= now() <= leaf.not_valid_after_utc
    assert cert_of(old).not_valid_after_utc > now(), "the old leaf stays valid: overlap"
    cred = svc.show("svc/tls")
    assert {v.number: v.stage for v in cred.versions} == {1: Stage.PREVIOUS, 2: Stage.CURRENT}
    hint = certs.lifetime_hint(leaf, 0.66)
    assert cred.next_rotation_at is not None
    got = cred.next_rotation_at
    got = got if got.tzinfo else got.replace(tzinfo=UTC)
    assert abs(got - hint) < timedelta(seconds=1)
    reads = [e for e in svc.audit_entries(credential="pki/ca") if e.action == "value.read"]
    assert reads, "the CA key is read through the audited resolver"


def test_ca_rotates_in_the_process_pool_and_new_leaves_chain_to_it(
    svc: BlockingService, tmp_path: Path
) -> None:
    add_ca(svc, key_type="rsa", rsa_bits="2048")
    path = tmp_path / "tls.pem"
    add_leaf(svc, publish=str(path))
    old_ca = cert_of(svc.get_value("pki/ca"))
    assert rotate(svc, ["pki/ca"]).ok
    new_ca = cert_of(svc.get_value("pki/ca"))
    assert new_ca.serial_number != old_ca.serial_number
    assert rotate(svc, ["svc/tls"]).ok
    value = svc.get_value("svc/tls")
    cert_of(value).verify_directly_issued_by(new_ca)
    assert path.read_bytes() == value.reveal(), "the bundle is published"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_expired_ca_is_refused_at_add_with_verify(svc: BlockingService) -> None:
    expired = certs.self_signed_ca_pem("Old CA", now() - DAY * 400, now() - DAY * 35)
    with pytest.raises(VerificationFailed, match="CA 'pki/old' expired on"):
        svc.add_credential(
            "pki/old",
            "certificate",
            settings={"role": "ca", "common_name": "Old CA"},
            value=ValueInput(value=Secret(expired)),
            verify=True,
        )
    svc.add_credential(
        "pki/old",
        "certificate",
        settings={"role": "ca", "common_name": "Old CA"},
        value=ValueInput(value=Secret(expired)),
    )
    with pytest.raises(VerificationFailed, match="CA 'pki/old' expired on"):
        svc.add_credential(
            "svc/tls",
            "certificate",
            settings={**LEAF, "ca": "pki/old"},
            verify=True,
        )
    with pytest.raises(VerificationFailed, match="cannot generate a value: CA 'pki/old' expired"):
        add_leaf(svc, ca="pki/old")
    names = [c.name for c in svc.list_credentials()]
    assert names == ["pki/old"]


def test_rotation_with_an_expired_ca_fails_and_keeps_the_old_leaf(svc: BlockingService) -> None:
    add_ca(svc)
    add_leaf(svc)
    old = svc.get_value("svc/tls")
    expired = certs.self_signed_ca_pem("Internal CA", now() - DAY * 400, now() - DAY)
    svc.update_credential("pki/ca", value=ValueInput(value=Secret(expired)))
    result = rotate(svc, ["svc/tls"])
    res = result.results[0]
    assert res.outcome is Outcome.FAILED
    assert "CA 'pki/ca' expired on" in (res.error or "")
    assert svc.get_value("svc/tls") == old
    assert {v.number: v.stage for v in svc.show("svc/tls").versions} == {1: Stage.CURRENT}


def tls_accepts(trust: Path, leaf_value: Secret, at: datetime) -> bool:
    """What a TLS client does: build a path from the leaf to a CA in the trust bundle."""
    store = verification.Store(x509.load_pem_x509_certificates(trust.read_bytes()))
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(at)
        .build_server_verifier(x509.DNSName("api.internal"))
    )
    bundle = certs.parse_bundle(leaf_value.reveal())
    try:
        verifier.verify(bundle.cert, bundle.chain)
    except verification.VerificationError:
        return False
    return True


def test_ca_rotation_keeps_old_leaves_trusted_for_the_grace(
    svc: BlockingService, tmp_path: Path
) -> None:
    trust = tmp_path / "trust.pem"
    svc.add_credential(
        "pki/ca",
        "certificate",
        settings={"role": "ca", "common_name": "Internal CA", "trust_bundle": str(trust)},
        policy=PolicyInput(grace="1h"),
        value=ValueInput(generate=True),
    )
    add_leaf(svc)
    old_leaf = svc.get_value("svc/tls")
    assert rotate(svc, ["pki/ca"]).ok
    assert rotate(svc, ["svc/tls"]).ok
    new_leaf = svc.get_value("svc/tls")
    t = now()
    assert tls_accepts(trust, old_leaf, t), "a leaf of the old CA is trusted during the grace"
    assert tls_accepts(trust, new_leaf, t)

    later = svc.clock() + timedelta(hours=1, minutes=1)
    svc.kernel.clock = lambda: later

    async def revoke() -> dict[int, bool]:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.process_revocations()

    revoked = run(revoke())
    assert len(revoked) == 2, "the old CA and the old leaf"
    assert all(revoked.values())
    assert not tls_accepts(trust, old_leaf, t), "the old CA left the trust bundle"
    assert tls_accepts(trust, new_leaf, t)
