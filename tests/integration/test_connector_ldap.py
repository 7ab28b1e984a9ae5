"""The ``ldap`` connector against a real OpenLDAP slapd (``ldap_target``, one per session).

Few tests that each check much, to keep the file's wall time small: one rotates twenty
accounts with hostile DNs at once through the engine (every mode and write method), one runs
the real CLI's ``--verify``, and two call the connector directly (TLS, and the steps'
idempotency and messages). Each test adds its own accounts (unique names).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ldap3.utils.dn import escape_rdn
from tests.support.ldap_server import SERVICE_OU, LdapTarget, running_slapd, slapd_binary

from rotator.config import Settings
from rotator.connectors import base as cb
from rotator.connectors.ldap import ADMIN_IDLE_MAX_S, LdapConfig, LdapConnector, hash_password
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, RotationRequest, Trigger
from rotator.errors import InvalidInput, NotFound, VerificationFailed
from rotator.service import BlockingService, PolicyInput, ValueInput

FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01, retry_attempts=3)
CLI = Path(sys.executable).parent / "rotator"
# Names that need every kind of DN escaping: quotes, spaces (inner, leading), a comma, a
# plus, a backslash, '#', '<>;=' and non-ASCII letters.
HOSTILE = [
    'O\'Brien "svc"',
    "Smith, Pat",
    "a+b=c",
    " leading space",
    "#hash",
    "back\\slash <x>;",
    "Zoë Łukasz 服务",
    "plain",
]
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def unique(base: str) -> str:
    return f"{base} {uuid.uuid4().hex[:6]}"


class _Resolver:
    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    async def get(self, name: str) -> Secret:
        if name not in self._values:
            raise cb.PermanentError(f"referenced credential {name!r}: no credential {name!r}")
        return Secret(self._values[name])


def login_of(value: Secret) -> tuple[str, str]:
    data = json.loads(value.reveal_text())
    return data["dn"], data["password"]


def rotate(svc: BlockingService, reqs: list[RotationRequest]) -> Any:
    async def go() -> Any:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate(reqs)

    return asyncio.run(go())


# ----------------------------------------------------------------------- through the engine


def test_twenty_hostile_accounts_rotate_at_once_in_every_mode_and_old_values_stop(
    svc: BlockingService, ldap_target: LdapTarget
) -> None:
    """Twenty accounts with hostile DNs (multi-valued RDNs among them), rotated in one batch:
    single (admin passmod, admin replace {SSHA} and {ARGON2}, self-service passmod and
    replace) and alternating (passmod, replace). After it every CURRENT binds; a single
    account's old password is refused at once, an alternating one's works until its grace
    ends and is refused after; an emergency rotation refuses the old value when it returns.
    No value ever reaches slapd's stats log."""
    t = ldap_target
    svc.add_credential("ldap/admin", "local", value=ValueInput(value=Secret(t.admin_password)))
    base = {"url": t.url, "admin": "ldap/admin", "admin_dn": t.admin_dn, "starttls": "true"}
    base["ca_file"] = t.ca_file
    kinds: list[dict[str, str]] = (
        [{"method": "passmod"}] * 4
        + [{"method": "replace"}] * 3
        + ([{"method": "replace", "hash": "argon2"}] * 2 if t.argon2 else [])
        + [{"method": "passmod", "self": "1"}] * 2
        + [{"method": "replace", "self": "1"}]
        + [{"method": "passmod", "mode": "alternating"}] * 4
        + [{"method": "replace", "mode": "alternating"}] * 4
    )
    kinds += [{"method": "passmod"}] * (20 - len(kinds))
    names: dict[str, dict[str, str]] = {}
    given: dict[str, str] = {}
    for i, kind in enumerate(kinds):
        hostile = unique(HOSTILE[i % len(HOSTILE)])
        password = f"first-{uuid.uuid4().hex}"
        # Every fifth one has a multi-valued RDN: cn=...+uid=...
        dn = t.add_account(hostile, password, uid=f"u+{i}" if i % 5 == 0 else None)
        settings = {**base, "dn": dn, "method": kind["method"]}
        if "hash" in kind:
            settings["hash"] = kind["hash"]
        if kind.get("self"):
            del settings["admin"], settings["admin_dn"]
        if kind.get("mode") == "alternating":
            clone = t.add_account(unique(hostile + " clone"), f"clone-{uuid.uuid4().hex}")
            settings |= {"mode": "alternating", "clone_dn": clone}
        name = f"ldap/acct-{i:02d}"
        svc.add_credential(
            name,
            "ldap",
            settings=settings,
            value=ValueInput(value=Secret(password)),
            policy=PolicyInput(grace="10m"),
            verify=True,
        )
        names[name] = settings
        given[name] = password

    result = rotate(svc, [RotationRequest(n) for n in names])
    assert result.ok, result.to_json()
    assert sorted(result.to_json()["rotated"]) == sorted(names)

    seen: list[str] = [*given.values(), t.admin_password]
    alternating: list[str] = []
    for name, settings in names.items():
        dn, password = login_of(svc.get_value(name))
        seen.append(password)
        assert t.can_bind(dn, password), f"{name}: CURRENT binds"
        if settings.get("mode") == "alternating":
            alternating.append(name)
            assert dn == settings["clone_dn"], "the idle account was rotated"
            assert t.can_bind(settings["dn"], given[name]), "PREVIOUS binds during its grace"
        else:
            assert dn == settings["dn"]
            assert not t.can_bind(dn, given[name]), "single: the old password stops at set"
        if settings["method"] == "replace":
            scheme = "{ARGON2}" if settings.get("hash") == "argon2" else "{SSHA}"
            assert [v[: len(scheme)] for v in t.user_password(dn)] == [scheme.encode()]

    later = svc.clock() + timedelta(minutes=11)
    svc.kernel.clock = lambda: later

    async def revoke_due() -> dict[int, bool]:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.process_revocations()

    assert all(asyncio.run(revoke_due()).values())
    for name in alternating:
        assert not t.can_bind(names[name]["dn"], given[name]), "PREVIOUS refused after grace"
        assert t.can_bind(*login_of(svc.get_value(name)))

    # Emergency (grace 0): the value CURRENT a moment ago is refused when rotate returns.
    before = {n: login_of(svc.get_value(n)) for n in alternating[:3]}
    emergency = [RotationRequest(n, trigger=Trigger.EMERGENCY, grace_s=0) for n in before]
    assert rotate(svc, emergency).ok
    for name, (dn, password) in before.items():
        assert not t.can_bind(dn, password), "emergency: the old value is refused at once"
        now_dn, now_password = login_of(svc.get_value(name))
        seen.append(now_password)
        assert now_dn != dn
        assert t.can_bind(now_dn, now_password)

    log = t.log.read_bytes()
    assert b"EXT oid=1.3.6.1.4.1.4203.1.11.1" in log, "stats level logs operations"
    leaked = [p for p in seen if p.encode() in log]
    assert not leaked, "a password reached slapd's stats log"


def test_verify_refuses_a_wrong_admin_secret_and_a_missing_dn_in_one_line(
    svc: BlockingService, settings: Settings, ldap_target: LdapTarget
) -> None:
    """``credential add --verify`` refuses a wrong admin secret (the real CLI: exit 2, one
    line naming the admin credential, never the secret) and a missing DN (in process, the
    same service call), and stores nothing."""
    t = ldap_target
    wrong = f"wrong-{uuid.uuid4().hex}"
    svc.add_credential("ldap/admin", "local", value=ValueInput(value=Secret(t.admin_password)))
    svc.add_credential("ldap/bad-admin", "local", value=ValueInput(value=Secret(wrong)))
    dn = t.add_account(unique('Smith, "verify"'), "pw-" + uuid.uuid4().hex)
    missing = f"cn={escape_rdn(unique('nobody, here'))},{SERVICE_OU}"
    common = {"url": t.url, "admin_dn": t.admin_dn}
    before = [c.name for c in svc.list_credentials()]

    args = ["credential", "add", "ldap/app", "--connector", "ldap", "--verify", "--generate"]
    for key, value in {**common, "dn": dn, "admin": "ldap/bad-admin"}.items():
        args += ["--set", f"{key}={value}"]
    env = {"PATH": "/usr/bin:/bin", "ROTATOR_HOME": str(settings.home)}
    env["ROTATOR_DB"] = settings.db_url
    proc = subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr == (
        "rotator: error: ldap/app: verification failed: admin credential 'ldap/bad-admin' was "
        f"refused by ldap at {t.url} (admin_dn {t.admin_dn!r})\n"
    )
    assert wrong not in proc.stderr

    with pytest.raises(VerificationFailed) as info:
        svc.add_credential(
            "ldap/gone",
            "ldap",
            settings={**common, "dn": missing, "admin": "ldap/admin"},
            value=ValueInput(generate=True),
            verify=True,
        )
    assert str(info.value) == (
        f"ldap/gone: verification failed: {missing!r} does not exist on {t.url}"
    )
    for name in ("ldap/app", "ldap/gone"):
        with pytest.raises(NotFound):
            svc.show(name)
    assert [c.name for c in svc.list_credentials()] == before


# -------------------------------------------------------------------------- direct calls


def test_test_step_binds_over_starttls_and_ldaps_with_the_ca_and_a_wrong_ca_refuses(
    ldap_target: LdapTarget,
) -> None:
    """``test`` binds afresh as the account over StartTLS and over ldaps when the server's
    certificate chains to ``ca_file``; another CA is a one-line permanent error naming TLS and
    no value; a server that never answers (also to a TLS handshake) is a transient error after
    ``timeout_s``; an unreadable ``ca_file`` is a permanent error naming it."""
    t = ldap_target
    password = "pw-" + uuid.uuid4().hex
    dn = t.add_account(unique("tls, ünïcode"), password)
    conn = LdapConnector()
    value = Secret(password)

    def check(**settings: str) -> None:
        cfg = LdapConfig.model_validate({"dn": dn, **settings})
        run_async(conn.test(cb.TestRequest("ldap/tls", 1, cfg, value)))

    try:
        check(url=t.url, starttls="true", ca_file=t.ca_file)
        check(url=t.ldaps_url, ca_file=t.ca_file)
        check(url=f"ldaps://localhost:{t.ldaps_port}", ca_file=t.ca_file)
        for settings in (
            {"url": t.url, "starttls": "true", "ca_file": t.other_ca_file},
            {"url": t.ldaps_url, "ca_file": t.other_ca_file},
        ):
            with pytest.raises(cb.PermanentError) as info:
                check(**settings)
            message = str(info.value)
            assert "TLS with" in message, message
            assert "not trusted" in message, message
            assert "\n" not in message
            assert password not in message
        # A server that accepts the connection and never answers: a transient error after
        # timeout_s, not a hung call.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            url = f"ldap://127.0.0.1:{silent.getsockname()[1]}"
            with pytest.raises(cb.TransientError, match=f"ldap at {url} did not answer within 1s"):
                check(url=url, timeout_s="1")
            # ... also when it is the TLS handshake that gets no answer (ldaps): the network,
            # not the certificate.
            url = f"ldaps://127.0.0.1:{silent.getsockname()[1]}"
            with pytest.raises(cb.TransientError, match=f"ldap at {url} did not answer within 1s"):
                check(url=url, timeout_s="1")
        # A ca_file that cannot be read is the settings' fault, not the network's.
        unreadable = r"ca_file '/nonexistent/ca\.pem' cannot be read"
        with pytest.raises(cb.PermanentError, match=unreadable):
            check(url=t.ldaps_url, ca_file="/nonexistent/ca.pem")
        cfg = LdapConfig.model_validate({"dn": dn, "url": t.ldaps_url, "ca_file": t.ca_file})
        with pytest.raises(cb.PermanentError, match="refused the new value"):
            run_async(conn.test(cb.TestRequest("ldap/tls", 1, cfg, Secret("nope-" + password))))
    finally:
        run_async(conn.aclose())


def test_steps_are_idempotent_and_rollback_puts_the_old_password_back(
    ldap_target: LdapTarget,
) -> None:
    """single mode, as the admin and as the account itself: set twice, rollback twice (the
    old password binds again, the new one no more), revoke of a value that no longer binds
    changes nothing; a rollback after the engine gave up on a ``set`` still writing waits for
    that write and undoes it; bad settings (plain ldap:// to a host not loopback, a timeout_s
    past the cap) and values are refused without quoting any value."""
    t = ldap_target
    conn = LdapConnector()
    resolver = _Resolver({"ldap/admin": t.admin_password})

    async def scenario(settings: dict[str, str]) -> None:
        old = "old-" + uuid.uuid4().hex
        dn = t.add_account(unique('Idem "potent", +x'), old)
        cfg = LdapConfig.model_validate({"url": t.url, "dn": dn, **settings})
        current = Secret(old)
        pending = await conn.create(cb.CreateRequest("ldap/x", 2, cfg, current=current))
        _, new = login_of(pending)
        set_req = cb.SetRequest("ldap/x", 2, cfg, pending, current, resolver)
        await conn.set(set_req)
        await conn.set(set_req)  # again: already done
        await conn.test(cb.TestRequest("ldap/x", 2, cfg, pending, resolver))
        assert t.can_bind(dn, new)
        assert not t.can_bind(dn, old)
        back = cb.RollbackRequest("ldap/x", 2, cfg, pending, current, resolver)
        await conn.rollback(back)
        await conn.rollback(back)  # again: pending no longer binds, nothing to do
        assert t.can_bind(dn, old)
        assert not t.can_bind(dn, new)
        await conn.revoke(cb.RevokeRequest("ldap/x", 2, cfg, pending, resolver))
        assert t.can_bind(dn, old), "revoking a value that no longer binds changes nothing"

    async def late_set() -> None:
        # The engine gives up on a set (its step timeout) whose thread is still writing:
        # the rollback that follows waits for that write to land before it looks.
        old = "old-" + uuid.uuid4().hex
        dn = t.add_account(unique("late set"), old)
        admin = {"admin": "ldap/admin", "admin_dn": t.admin_dn}
        cfg = LdapConfig.model_validate({"url": t.url, "dn": dn, **admin})
        pending = await conn.create(cb.CreateRequest("ldap/late", 2, cfg))
        entered, release = threading.Event(), threading.Event()
        writer = conn._writer

        def gated(*args: Any, **kwargs: Any) -> Callable[[Any], None]:
            write = writer(*args, **kwargs)

            def slow(c: Any) -> None:
                entered.set()
                release.wait(30)
                write(c)

            return slow

        conn._writer = gated  # type: ignore[method-assign]
        try:
            step = cb.SetRequest("ldap/late", 2, cfg, pending, Secret(old), resolver)
            cut = asyncio.create_task(conn.set(step))
            await asyncio.to_thread(entered.wait, 30)
            cut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cut
            back = cb.RollbackRequest("ldap/late", 2, cfg, pending, Secret(old), resolver)
            rollback = asyncio.create_task(conn.rollback(back))
            done, _ = await asyncio.wait({rollback}, timeout=0.3)
            assert not done, "rollback waits for the set still under way"
            release.set()
            await rollback
        finally:
            release.set()
            conn._writer = writer  # type: ignore[method-assign]
        assert t.can_bind(dn, old)
        assert not t.can_bind(dn, login_of(pending)[1])

    try:
        run_async(scenario({"admin": "ldap/admin", "admin_dn": t.admin_dn}))
        run_async(scenario({"method": "replace"}))  # the account changes its own password
        run_async(late_set())
        # A value naming a DN this credential does not own is refused before any bind.
        cfg = LdapConfig.model_validate({"url": t.url, "dn": f"cn=a,{SERVICE_OU}"})
        other = Secret(json.dumps({"dn": t.admin_dn, "password": "secret-xyz"}))
        with pytest.raises(cb.PermanentError) as info:
            run_async(conn.test(cb.TestRequest("ldap/x", 1, cfg, other)))
        assert "secret-xyz" not in str(info.value)
    finally:
        run_async(conn.aclose())
    for bad, expected in (
        ({"url": "http://x", "dn": "cn=a"}, "url must be ldap://"),
        ({"url": t.url, "dn": "cn=a,,="}, "not a valid DN"),
        ({"url": t.ldaps_url, "dn": "cn=a", "starttls": "true"}, "starttls is for ldap://"),
        (
            {"url": t.url, "dn": "cn=a", "mode": "alternating", "admin": "a", "admin_dn": "cn=b"},
            "alternating mode needs clone_dn",
        ),
        ({"url": t.url, "dn": "cn=a", "hash": "argon2"}, "hash applies to method=replace"),
        ({"url": "ldap://ldap.example.org", "dn": "cn=a"}, "passwords in clear text"),
        ({"url": "ldap://10.0.0.7:389", "dn": "cn=a"}, "passwords in clear text"),
        ({"url": t.url, "dn": "cn=a", "timeout_s": "11"}, "less than or equal to 10"),
    ):
        with pytest.raises(InvalidInput, match=expected):
            cb.parse_config(conn, bad)
    # Plain ldap:// elsewhere than loopback only with TLS or when the operator says so.
    for fine in (
        {"url": "ldap://ldap.example.org", "dn": "cn=a", "starttls": "true"},
        {"url": "ldap://ldap.example.org", "dn": "cn=a", "allow_insecure": "true"},
        {"url": "ldaps://ldap.example.org", "dn": "cn=a"},
        {"url": "ldap://localhost:3389", "dn": "cn=a"},
        {"url": "ldap://[::1]:3389", "dn": "cn=a"},
    ):
        cb.parse_config(conn, fine)


def test_verify_refuses_argon2_where_the_server_cannot_check_it_and_admin_binds_are_pooled(
    ldap_target: LdapTarget,
) -> None:
    """On a slapd without the argon2 module ``verify`` and ``set`` refuse ``hash=argon2`` (and
    accept ``ssha``); a rollback after an {ARGON2} value landed anyway puts CURRENT back (and
    says the state is unknown when it cannot). Admin work shares one pooled bind per admin
    value: a wrong value is ReferenceRefused and its pool is not kept. No error names a value."""
    binary = slapd_binary()
    assert binary is not None
    with running_slapd(binary, argon2=False) as t:
        password = "pw-" + uuid.uuid4().hex
        dn = t.add_account(unique('no argon2, "here"'), password)
        conn = LdapConnector()
        good = _Resolver({"ldap/admin": t.admin_password})
        wrong = "wrong-" + uuid.uuid4().hex
        bad = _Resolver({"ldap/admin": wrong})
        settings = {"url": t.url, "dn": dn, "admin": "ldap/admin", "admin_dn": t.admin_dn}
        settings["method"] = "replace"

        def cfg(**extra: str) -> LdapConfig:
            return LdapConfig.model_validate({**settings, **extra})

        async def scenario() -> list[str]:
            messages = []
            with pytest.raises(cb.PermanentError) as info:
                await conn.verify(cb.VerifyRequest("ldap/x", cfg(hash="argon2"), secrets=good))
            messages.append(str(info.value))
            assert "hash=argon2: cannot confirm" in messages[-1]
            await conn.verify(cb.VerifyRequest("ldap/x", cfg(hash="ssha"), secrets=good))
            pending = await conn.create(cb.CreateRequest("ldap/x", 2, cfg()))
            await conn.set(cb.SetRequest("ldap/x", 2, cfg(), pending, Secret(password), good))
            with pytest.raises(cb.ReferenceRefused) as refused:
                await conn.set(cb.SetRequest("ldap/x", 2, cfg(), pending, None, bad))
            messages.append(str(refused.value))
            assert refused.value.reference == "ldap/admin"
            missing = f"cn=gone,{SERVICE_OU}"
            bare = Secret(login_of(pending)[1])  # a bare password: of the configured dn
            with pytest.raises(cb.PermanentError) as info:
                await conn.set(cb.SetRequest("ldap/x", 2, cfg(dn=missing), bare, None, good))
            messages.append(str(info.value))
            assert "noSuchObject" in messages[-1]
            assert repr(conn) == "LdapConnector(1 admin pools)"
            # set refuses hash=argon2 on this server (verify was not run): the account keeps
            # CURRENT, so the engine's rollback has nothing to undo.
            argon = "argon-" + uuid.uuid4().hex
            adn = t.add_account(unique("argon2, lockout"), argon)
            acfg = cfg(dn=adn, hash="argon2")
            apending = await conn.create(cb.CreateRequest("ldap/a", 2, acfg))
            with pytest.raises(cb.PermanentError, match="hash=argon2: cannot confirm") as info:
                await conn.set(cb.SetRequest("ldap/a", 2, acfg, apending, Secret(argon), good))
            messages.append(str(info.value))
            assert t.can_bind(adn, argon)
            # A set that did land an {ARGON2} value this server cannot check (PENDING binds
            # no more than CURRENT): rollback puts CURRENT back, it does not return silently.
            landed = hash_password(login_of(apending)[1], "argon2")
            t.replace_user_password(adn, landed)
            assert not t.can_bind(adn, argon)
            back = cb.RollbackRequest("ldap/a", 2, acfg, apending, Secret(argon), good)
            await conn.rollback(back)
            assert t.can_bind(adn, argon), "rolled back, so CURRENT binds again"
            await conn.rollback(back)  # again: CURRENT binds, nothing to do
            # Without an admin, and neither CURRENT nor PENDING binding: an error naming the
            # account's unknown state, never a silent success.
            t.replace_user_password(adn, landed)
            selfcfg = LdapConfig.model_validate({"url": t.url, "dn": adn, "method": "replace"})
            with pytest.raises(cb.PermanentError, match="unknown state") as info:
                await conn.rollback(
                    cb.RollbackRequest("ldap/a", 2, selfcfg, apending, Secret(argon), good)
                )
            messages.append(str(info.value))
            await conn.aclose()
            messages.append(pending.reveal_text())
            return messages

        *messages, value = run_async(scenario())
        for message in messages:
            assert "\n" not in message
            for secret in (password, wrong, t.admin_password, login_of(Secret(value))[1]):
                assert secret not in message
        log = t.log.read_text(errors="replace")
        # verify twice and set share one bind; the refused value one; the good value again
        # (its pool was replaced by the refused one's) one more.
        assert log.count(f'BIND dn="{t.admin_dn}" method=128') == 3


def test_admin_binds_the_server_closed_while_idle_are_replaced_without_failing_a_step() -> None:
    """slapd with ``idletimeout 1``: once it closed the pooled admin binds, the next ``set``
    succeeds at its first attempt (the broken idle binds are dropped together and the work
    runs once more on one fresh bind, not one failed attempt per idle bind); a bind idle
    longer than ADMIN_IDLE_MAX_S (a fake clock) is closed unused and replaced."""
    binary = slapd_binary()
    assert binary is not None
    with running_slapd(binary, argon2=False, idle_timeout=1) as t:
        now = [0.0]
        conn = LdapConnector(clock=lambda: now[0])
        good = _Resolver({"ldap/admin": t.admin_password})
        admin = {"url": t.url, "admin": "ldap/admin", "admin_dn": t.admin_dn}
        cfgs = [
            LdapConfig.model_validate({**admin, "dn": t.add_account(unique("idle"), "pw-x" * 5)})
            for _ in range(4)
        ]

        def log() -> str:
            return t.log.read_text(errors="replace")

        def binds() -> int:
            return log().count(f'BIND dn="{t.admin_dn}" method=128')

        async def set_new(cfg: LdapConfig) -> None:
            pending = await conn.create(cb.CreateRequest("ldap/idle", 2, cfg))
            await conn.set(cb.SetRequest("ldap/idle", 2, cfg, pending, None, good))
            assert t.can_bind(cfg.dn, login_of(pending)[1])

        async def scenario() -> None:
            await asyncio.gather(*(set_new(cfg) for cfg in cfgs))
            opened = binds()
            # Wait for slapd to close every pooled admin bind (and the fixture's own binds).
            for _ in range(200):
                if log().count("closed (idletimeout)") >= opened:
                    break
                await asyncio.sleep(0.05)
            await set_new(cfgs[0])
            assert binds() == opened + 1
            now[0] += ADMIN_IDLE_MAX_S + 1
            await set_new(cfgs[1])
            assert binds() == opened + 2, "a bind idle past the limit is replaced unused"

        try:
            run_async(scenario())
        finally:
            run_async(conn.aclose())
