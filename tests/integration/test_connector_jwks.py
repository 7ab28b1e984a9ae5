"""The ``jwks`` connector: directly (no store), then through the engine on both databases."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import pickle
import stat
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from rotator.connectors import base as cb
from rotator.connectors import jwks
from rotator.connectors.jwks import JwksConfig, JwksConnector
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest, Trigger
from rotator.errors import InvalidInput, VerificationFailed
from rotator.service import BlockingService, PolicyInput, ValueInput

T = TypeVar("T")
FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01, retry_attempts=2)
CONN = JwksConnector()
ALGS = ["ES256", "RS256", "EdDSA", "Ed25519"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def config(publish: Path, **settings: Any) -> JwksConfig:
    raw = {"publish": str(publish), **{k: str(v) for k, v in settings.items()}}
    if raw.get("alg") == "RS256":
        raw.setdefault("rsa_bits", "2048")  # fast enough for tests
    cfg = cb.parse_config(CONN, raw)
    assert isinstance(cfg, JwksConfig)
    return cfg


def new_key(cfg: JwksConfig) -> Secret:
    return run(CONN.create(cb.CreateRequest(credential="k", version=1, config=cfg)))


def published(path: Path) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = json.loads(path.read_text())["keys"]
    return keys


def kids(path: Path) -> set[str]:
    return {k["kid"] for k in published(path)} if path.exists() else set()


def sign(value: Secret, alg: str, **claims: Any) -> str:
    sk = jwks.SigningKey(value, alg)
    return jwt.encode({"alg": alg, "kid": sk.kid}, {"sub": "app", **claims}, sk.jose, [alg])


def verifier_accepts(path: Path, token: str, alg: str) -> bool:
    """What a JWT verifier does: load the published set, pick the key by kid, check."""
    try:
        keyset = KeySet.import_key_set(json.loads(path.read_text()))
        jwt.decode(token, keyset, algorithms=[alg])
    except (JoseError, ValueError):
        return False
    return True


REQUESTS: dict[str, type[Any]] = {
    "set": cb.SetRequest,
    "test": cb.TestRequest,
    "finish": cb.FinishRequest,
    "revoke": cb.RevokeRequest,
    "rollback": cb.RollbackRequest,
}


def step(method: str, cfg: JwksConfig, **fields: Any) -> None:
    """One connector step for credential ``k`` (request fields by keyword)."""
    req = REQUESTS[method](credential="k", config=cfg, **fields)
    run(getattr(CONN, method)(req))


def set_req(cfg: JwksConfig, pending: Secret, current: Secret | None = None) -> cb.SetRequest:
    return cb.SetRequest(credential="k", version=2, config=cfg, pending=pending, current=current)


# -- direct ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
@pytest.mark.parametrize("alg", ALGS)
def test_each_alg_full_cycle_on_the_published_set(tmp_path: Path, alg: str) -> None:
    path = tmp_path / "jwks.json"
    cfg = config(path, alg=alg, publish_pending=True)
    old, new = new_key(cfg), new_key(cfg)
    assert new.reveal().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    native = serialization.load_pem_private_key(new.reveal(), None)
    expected = {"ES256": ec.EllipticCurvePrivateKey, "RS256": rsa.RSAPrivateKey}
    assert isinstance(native, expected.get(alg, ed25519.Ed25519PrivateKey))
    old_kid, new_kid = jwks.kid_of(old), jwks.kid_of(new)

    step("set", cfg, version=2, pending=new, current=old)
    assert kids(path) == {new_kid}, "publish_pending publishes the new key at set time"
    entry = published(path)[0]
    assert entry["alg"] == alg
    assert entry["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(entry), "only the public half"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    step("test", cfg, version=2, pending=new)
    step("finish", cfg, version=2, current=new, previous=old)
    assert kids(path) == {new_kid, old_kid}
    assert verifier_accepts(path, sign(old, alg), alg)
    assert verifier_accepts(path, sign(new, alg), alg)

    step("revoke", cfg, version=1, value=old)
    step("revoke", cfg, version=1, value=old)  # idempotent
    assert kids(path) == {new_kid}
    assert not verifier_accepts(path, sign(old, alg), alg)
    assert verifier_accepts(path, sign(new, alg), alg)


def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    cfg = config(tmp_path / "jwks.json")
    value = new_key(cfg)
    pub = serialization.load_pem_private_key(value.reveal(), None).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    nums = pub.public_numbers()

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    # RFC 7638 section 3: the required members, sorted, no whitespace; SHA-256; base64url.
    members = {"crv": "P-256", "kty": "EC", "x": b64(nums.x.to_bytes(32, "big"))}
    members["y"] = b64(nums.y.to_bytes(32, "big"))
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    assert jwks.kid_of(value) == b64(hashlib.sha256(canonical.encode()).digest())


def test_set_is_idempotent_and_does_not_rewrite_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    cfg = config(path, publish_pending=True)
    value = new_key(cfg)
    step("set", cfg, version=2, pending=value, current=None)
    before = path.stat()
    step("set", cfg, version=2, pending=value, current=None)
    step("finish", cfg, version=2, current=value, previous=None)
    after = path.stat()
    assert len(published(path)) == 1
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_without_publish_pending_the_key_appears_only_at_finish(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    assert config(path).publish_pending, "publish_pending is on by default"
    cfg = config(path, publish_pending=False)
    old, new = new_key(cfg), new_key(cfg)
    step("set", cfg, version=2, pending=new, current=old)
    assert not path.exists()
    step("test", cfg, version=2, pending=new)  # verified with the pending key itself
    step("finish", cfg, version=2, current=new, previous=old)
    assert kids(path) == {jwks.kid_of(new), jwks.kid_of(old)}


def test_rollback_removes_only_the_pending_key_and_keeps_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    cfg = config(path, publish_pending=True)
    current, pending = new_key(cfg), new_key(cfg)
    foreign = {"kty": "oct", "kid": "someone-else", "k": "c2VjcmV0"}
    path.write_text(json.dumps({"keys": [foreign]}))
    step("finish", cfg, version=1, current=current, previous=None)
    step("set", cfg, version=2, pending=pending, current=current)
    assert kids(path) == {"someone-else", jwks.kid_of(current), jwks.kid_of(pending)}
    step("rollback", cfg, version=2, pending=pending, current=current)
    step("rollback", cfg, version=2, pending=pending, current=current)
    assert kids(path) == {"someone-else", jwks.kid_of(current)}
    assert published(path)[0] == foreign, "a key rotator did not put there is kept verbatim"


def test_tampered_entry_fails_test_and_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    cfg = config(path, publish_pending=True)
    pending, intruder = new_key(cfg), new_key(cfg)
    step("set", cfg, version=2, pending=pending, current=None)
    # Someone swaps the key material behind the pending kid for their own key.
    entry = published(path)[0]
    evil = jwks.SigningKey(intruder, "ES256").public_jwk()
    entry.update(x=evil["x"], y=evil["y"])
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(cb.PermanentError, match="did not verify"):
        step("test", cfg, version=2, pending=pending)
    with pytest.raises(cb.PermanentError, match="different key under kid"):
        step("set", cfg, version=2, pending=pending, current=None)
    assert published(path) == [entry]


def test_pending_key_missing_from_published_set_fails_test(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    cfg = config(path, publish_pending=True)
    pending = new_key(cfg)
    step("set", cfg, version=2, pending=pending, current=None)
    path.write_text(json.dumps({"keys": []}))
    with pytest.raises(cb.PermanentError, match="is not in the published JWK Set"):
        step("test", cfg, version=2, pending=pending)


@pytest.mark.parametrize("content", ["not json", '{"keys": "nope"}', "[]"])
def test_unreadable_file_is_never_overwritten(tmp_path: Path, content: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    cfg = config(path, publish_pending=True)
    value = new_key(cfg)
    with pytest.raises(cb.PermanentError, match=r"jwks\.json"):
        step("set", cfg, version=2, pending=value, current=None)
    with pytest.raises(cb.PermanentError):
        step("finish", cfg, version=2, current=value, previous=None)
    assert path.read_text() == content


def test_key_of_the_wrong_type_for_alg_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    ec_value = new_key(config(path, alg="ES256"))
    cfg = config(path, alg="RS256", publish_pending=True)
    with pytest.raises(cb.PermanentError, match="EC secp256r1 key but alg RS256 needs an RSA"):
        step("set", cfg, version=2, pending=ec_value, current=None)
    with pytest.raises(cb.PermanentError, match="alg RS256 needs"):
        step("test", cfg, version=2, pending=ec_value)
    assert not path.exists()
    with pytest.raises(cb.PermanentError, match="not an unencrypted PEM private key"):
        step("test", cfg, version=2, pending=Secret("hunter2"))


def test_old_key_keeps_its_own_alg_after_alg_changes(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    old = new_key(config(path, alg="ES256"))
    cfg = config(path, alg="EdDSA")
    new = new_key(cfg)
    step("finish", cfg, version=2, current=new, previous=old)
    algs = {k["kid"]: k["alg"] for k in published(path)}
    assert algs == {jwks.kid_of(new): "EdDSA", jwks.kid_of(old): "ES256"}


def test_a_token_for_another_audience_or_alg_does_not_verify(tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "jwks.json",
        audience="payments",
        issuer="https://auth.example",
        publish_pending=False,
    )
    value = new_key(cfg)
    step("test", cfg, version=2, pending=value)
    sk = jwks.SigningKey(value, "ES256")
    public = jwks._import_public(sk.public_jwk())
    other = config(tmp_path / "jwks.json", audience="billing", issuer="https://auth.example")
    token = jwks.sign_test_token(sk, other, "x")
    with pytest.raises(cb.PermanentError, match="did not verify"):
        jwks.verify_test_token(token, public, cfg)
    rs = config(tmp_path / "jwks.json", alg="RS256", audience="payments")
    with pytest.raises(cb.PermanentError, match="did not verify"):
        jwks.verify_test_token(jwks.sign_test_token(sk, cfg, "x"), public, rs)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"alg": "HS256"}, "alg"),
        ({"publish": "relative/jwks.json"}, "absolute"),
        ({"publish_mode": "rw-r--r--"}, "octal"),
        ({"rsa_bits": "1024"}, "rsa_bits"),
        ({"kid": "x"}, "unknown setting"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, settings: dict[str, str], problem: str) -> None:
    raw = {"publish": str(tmp_path / "jwks.json"), **settings}
    with pytest.raises(InvalidInput, match=problem):
        cb.parse_config(CONN, raw)
    with pytest.raises(InvalidInput):
        cb.parse_config(CONN, {})  # publish is required


def test_offload_is_a_picklable_top_level_function(tmp_path: Path) -> None:
    cfg = config(tmp_path / "jwks.json", alg="EdDSA")
    fn = CONN.offload(cfg)
    assert fn is jwks.generate_signing_key
    fn2, cfg2 = pickle.loads(pickle.dumps((fn, cfg)))  # noqa: S301
    assert fn2(cfg2).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_verify_checks_the_publish_directory_and_the_key(tmp_path: Path) -> None:
    cfg = config(tmp_path / "jwks.json")
    run(CONN.verify(cb.VerifyRequest(credential="k", config=cfg, current=new_key(cfg))))
    missing = config(tmp_path / "nowhere" / "jwks.json")
    with pytest.raises(cb.PermanentError, match="does not exist"):
        run(CONN.verify(cb.VerifyRequest(credential="k", config=missing)))
    rs = config(tmp_path / "jwks.json", alg="RS256")
    with pytest.raises(cb.PermanentError, match="needs an RSA"):
        run(CONN.verify(cb.VerifyRequest(credential="k", config=rs, current=new_key(cfg))))


def test_concurrent_publishers_to_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    cfg = config(path, publish_pending=True)
    values = [new_key(cfg) for _ in range(20)]

    async def go() -> None:
        await asyncio.gather(*(CONN.set(set_req(cfg, v)) for v in values))

    run(go())
    assert kids(path) == {jwks.kid_of(v) for v in values}
    assert [p for p in os.listdir(tmp_path) if p != "jwks.json"] == [], "no temp files left"


# -- through the engine (both databases) -----------------------------------------------------


def rotate(svc: BlockingService, reqs: list[RotationRequest]) -> Any:
    async def go() -> Any:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate(reqs)

    return run(go())


def revoke_due(svc: BlockingService) -> dict[int, bool]:
    async def go() -> dict[int, bool]:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.process_revocations()

    return run(go())


def add_jwks(
    svc: BlockingService, name: str, path: Path, grace: str = "10m", **settings: Any
) -> None:
    cfg = {"publish": str(path), **{k: str(v) for k, v in settings.items()}}
    if cfg.get("alg") == "RS256":
        cfg.setdefault("rsa_bits", "2048")
    svc.add_credential(
        name, "jwks", settings=cfg, policy=PolicyInput(grace=grace), value=ValueInput(generate=True)
    )


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
def test_rotation_publishes_current_and_previous_until_grace_ends(
    svc: BlockingService, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    add_jwks(svc, "auth/signing", path, grace="10m")
    old = svc.get_value("auth/signing")
    old_token = sign(old, "ES256")

    assert rotate(svc, [RotationRequest("auth/signing")]).ok
    new = svc.get_value("auth/signing")
    assert kids(path) == {jwks.kid_of(old), jwks.kid_of(new)}
    assert verifier_accepts(path, old_token, "ES256"), "old tokens verify during the grace"
    assert verifier_accepts(path, sign(new, "ES256"), "ES256")

    assert revoke_due(svc) == {}, "nothing is revoked before the grace ends"
    later = svc.clock() + timedelta(minutes=11)
    svc.kernel.clock = lambda: later
    assert list(revoke_due(svc).values()) == [True]
    assert kids(path) == {jwks.kid_of(new)}
    assert not verifier_accepts(path, old_token, "ES256"), "old tokens fail after the grace"
    assert verifier_accepts(path, sign(new, "ES256"), "ES256")
    stages = {v.number: v.stage for v in svc.show("auth/signing").versions}
    assert stages == {1: Stage.RETIRED, 2: Stage.CURRENT}


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
def test_every_alg_rotates_into_one_shared_set(svc: BlockingService, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    for alg in ALGS:
        add_jwks(svc, f"sig/{alg.lower()}", path, alg=alg, publish_pending=True)
    names = [f"sig/{a.lower()}" for a in ALGS]
    before = {n: svc.get_value(n) for n in names}
    result = rotate(svc, [RotationRequest(n) for n in names])
    assert result.to_json()["failed"] == []
    want = set()
    for n, alg in zip(names, ALGS, strict=True):
        new = svc.get_value(n)
        want |= {jwks.kid_of(new), jwks.kid_of(before[n])}
        assert verifier_accepts(path, sign(new, alg), alg)
    assert kids(path) == want
    created = [e for e in svc.audit_entries() if e.action == "rotation.create"]
    assert len(created) == len(ALGS)


def test_publish_pending_publishes_before_finish(
    svc: BlockingService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jwks.json"
    add_jwks(svc, "a", path, publish_pending=True)
    add_jwks(svc, "b", path, publish_pending=False)
    seen: dict[str, set[str]] = {}
    real_finish = JwksConnector.finish

    async def spy(self: JwksConnector, req: cb.FinishRequest) -> None:
        seen[req.credential] = kids(path)
        await real_finish(self, req)

    monkeypatch.setattr(JwksConnector, "finish", spy)
    assert rotate(svc, [RotationRequest("a")]).ok
    assert jwks.kid_of(svc.get_value("a")) in seen["a"]
    assert rotate(svc, [RotationRequest("b")]).ok
    assert jwks.kid_of(svc.get_value("b")) not in seen["b"]
    assert jwks.kid_of(svc.get_value("b")) in kids(path)


def test_tampered_file_fails_rotation_and_keeps_current(
    svc: BlockingService, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    add_jwks(svc, "a", path, publish_pending=True)
    assert rotate(svc, [RotationRequest("a")]).ok
    current = svc.get_value("a")
    path.write_text('{"keys": [')  # truncated by someone else
    data = rotate(svc, [RotationRequest("a")]).to_json()
    assert data["rotated"] == []
    assert "not valid JSON" in data["failed"][0]["error"]
    assert svc.get_value("a") == current
    stages = {v.number: v.stage for v in svc.show("a").versions}
    assert stages == {1: Stage.PREVIOUS, 2: Stage.CURRENT, 3: Stage.FAILED}
    assert path.read_text() == '{"keys": ['


def test_wrong_alg_value_fails_rotation_test_and_rolls_back(
    svc: BlockingService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jwks.json"
    add_jwks(svc, "a", path, alg="ES256")
    old = svc.get_value("a")
    # A broken generator: an Ed25519 key for an ES256 credential.
    monkeypatch.setattr(JwksConnector, "offload", lambda self, cfg: None)

    async def wrong(self: JwksConnector, req: cb.CreateRequest) -> Secret:
        return Secret(jwks.generate_signing_key(config(path, alg="EdDSA")))

    monkeypatch.setattr(JwksConnector, "create", wrong)
    result = rotate(svc, [RotationRequest("a")])
    assert result.results[0].outcome is Outcome.ROLLED_BACK
    assert "alg ES256 needs an EC P-256 key" in (result.results[0].error or "")
    assert svc.get_value("a") == old
    # Only the first key, published when it was added, is in the set.
    assert [k["kid"] for k in json.loads(path.read_text())["keys"]] == [jwks.kid_of(old)]


def test_emergency_rotation_unpublishes_the_old_key_at_once(
    svc: BlockingService, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    add_jwks(svc, "a", path, grace="1h")
    old = svc.get_value("a")
    assert rotate(svc, [RotationRequest("a", trigger=Trigger.EMERGENCY, grace_s=0)]).ok
    assert kids(path) == {jwks.kid_of(svc.get_value("a"))}
    assert jwks.kid_of(old) not in kids(path)


def test_add_with_verify_refuses_an_unwritable_publish_path(
    svc: BlockingService, tmp_path: Path
) -> None:
    with pytest.raises(VerificationFailed, match="does not exist"):
        svc.add_credential(
            "a",
            "jwks",
            settings={"publish": str(tmp_path / "missing" / "jwks.json")},
            value=ValueInput(generate=True),
            verify=True,
        )
