"""The ``openbao`` sink against a real OpenBao dev server (TLS, KV v2 at ``secret/``): each
rotation's new value lands in the KV secret; its token or AppRole secret_id is a rotator
credential read (and audited) by the engine; someone else's write is never overwritten; bad
specs are refused with one line and nothing stored; no value or token ever shows."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

import pytest
from tests.support.openbao_server import OpenBaoServer

from rotator.config import Settings
from rotator.domain.principal import Grant, Principal, Role
from rotator.domain.secret import Secret
from rotator.engine import BatchResult, Engine, EngineOptions, RotationRequest
from rotator.errors import PermissionDenied
from rotator.service import BlockingService, ValueInput
from rotator.sinks import load_sink
from rotator.sinks.base import SinkRequest
from rotator.sinks.openbao import OpenBaoSink

FAST = EngineOptions(retry_initial_s=0.001)


def rotate(svc: BlockingService, name: str) -> BatchResult:
    async def go() -> BatchResult:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate([RotationRequest(name)])

    return asyncio.run(go())


def audit_json(svc: BlockingService) -> str:
    return json.dumps([e.to_json() for e in svc.audit_entries()])


def engine_reads(svc: BlockingService, name: str) -> int:
    return sum(
        1
        for e in svc.audit_entries(credential=name)
        if e.action == "value.read" and e.actor == "engine"
    )


def sink_entries(svc: BlockingService, name: str, action: str) -> list[dict[str, object]]:
    return [e.details for e in svc.audit_entries(credential=name) if e.action == action]


class Fixed:
    """A secret resolver holding one value (a sink called directly, outside the engine)."""

    def __init__(self, value: str) -> None:
        self.value = value

    async def get(self, name: str) -> Secret:
        return Secret(self.value)


def token_accessors(bao: OpenBaoServer) -> int:
    resp = bao.call("LIST", "auth/token/accessors")
    resp.raise_for_status()
    return len(resp.json()["data"]["keys"])


def test_openbao_sink_writes_every_rotation_with_cas_and_never_overwrites_another_writer(
    svc: BlockingService,
    openbao_server: OpenBaoServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    bao = openbao_server
    path = f"app/{uuid.uuid4().hex[:12]}/db"
    token = bao.new_token()
    svc.add_credential("bao/token", "local", value=ValueInput(value=Secret(token)))
    svc.add_credential(
        "app/db",
        "local",
        value=ValueInput(generate=True),
        sinks=[
            f"openbao:addr={bao.addr},ca={bao.ca_file},path={path},key=password,token=bao/token"
        ],
    )
    assert bao.kv_read(path) is None, "sinks run after rotations, not at add"
    values = []
    for expected_version in (1, 2, 3):
        result = rotate(svc, "app/db").to_json()
        assert result["rotated"] == ["app/db"], result
        assert not result["warnings"], result
        value = svc.get_value("app/db").reveal_text()
        values.append(value)
        # Version 1 was a first write (cas=0), each later one a check-and-set on the last.
        assert bao.kv_read(path) == ({"password": value}, expected_version)
    writes = sink_entries(svc, "app/db", "sink.write")
    assert len(writes) == 3
    assert writes[0]["sink"] == (
        f"openbao {bao.addr}/v1/secret/data/{path} (password; token bao/token)"
    )
    assert engine_reads(svc, "bao/token") >= 1, "the engine's read of the token is audited"
    # A retry whose first answer was lost finds the value there: nothing more is written.
    sink = load_sink(dict(svc.show("app/db").sinks[0]))
    assert isinstance(sink, OpenBaoSink)
    asyncio.run(sink.write(SinkRequest(Secret(values[2]), Secret(values[1]), Fixed(token))))
    assert bao.kv_read(path) == ({"password": values[2]}, 3)

    # One rotation's write is missed (its token refused), then a value is set by hand
    # (no sink runs): the secret holds an older value of rotator's own, not someone else's,
    # and the next rotation writes over it with check-and-set.
    wrong = "s." + uuid.uuid4().hex
    svc.update_credential("bao/token", value=ValueInput(value=Secret(wrong)))
    result = rotate(svc, "app/db").to_json()
    assert "permission denied" in result["warnings"][0]["warning"], result
    [denied] = sink_entries(svc, "app/db", "sink.failed")
    assert (denied["reason"], denied["attempts"]) == ("denied", 2), "token re-read once"
    svc.update_credential("bao/token", value=ValueInput(value=Secret(token)))
    svc.update_credential("app/db", value=ValueInput(generate=True))
    assert bao.kv_read(path) == ({"password": values[2]}, 3)
    result = rotate(svc, "app/db").to_json()
    assert not result["warnings"], result
    values.append(svc.get_value("app/db").reveal_text())
    assert bao.kv_read(path) == ({"password": values[-1]}, 4)

    # Someone else writes the secret between two rotations.
    theirs = "written-by-the-other-writer"
    assert bao.kv_write(path, {"password": theirs}) == 5
    before = svc.get_value("app/db")
    result = rotate(svc, "app/db").to_json()
    assert result["rotated"] == ["app/db"], "a sink conflict never un-rotates"
    [warning] = result["warnings"]
    assert "conflict" in warning["warning"]
    assert "not a value rotator wrote" in warning["warning"]
    assert svc.get_value("app/db") != before, "CURRENT moved all the same"
    assert bao.kv_read(path) == ({"password": theirs}, 5), "the other writer's value stays"
    failed = sink_entries(svc, "app/db", "sink.failed")[-1]
    assert failed["reason"] == "conflict"
    assert failed["attempts"] == 1, "a conflict is not retried"

    race = overtaken_and_raced(svc, bao, token)

    shown = audit_json(svc) + json.dumps(result) + caplog.text + "".join(capfd.readouterr())
    assert "HTTP Request" in caplog.text, "httpx's request log lines were captured"
    for secret in (token, wrong, *values, *race, svc.get_value("app/db").reveal_text()):
        assert secret not in shown


def overtaken_and_raced(svc: BlockingService, bao: OpenBaoServer, token: str) -> list[str]:
    """A rotation overtaken by the next one before its sink write; a write racing the sink
    between its read and its check-and-set; a deleted latest version. The values seen."""
    path = f"app/{uuid.uuid4().hex[:12]}/race"
    svc.add_credential(
        "app/race",
        "local",
        value=ValueInput(generate=True),
        sinks=[
            f"openbao:addr={bao.addr},ca={bao.ca_file},path={path},key=password,token=bao/token"
        ],
    )
    first = svc.get_value("app/race").reveal_text()
    assert bao.kv_write(path, {"password": first}) == 1

    # Rotation N frees the credential at its stage move; rotation N+1 runs to its end before
    # N's sink write. N+1 writes over the value before N's (rotator's own), N writes nothing.
    write = OpenBaoSink.write
    later: list[BatchResult] = []
    started: list[bool] = []

    async def overtaken(self: OpenBaoSink, req: SinkRequest) -> None:
        if not started:
            started.append(True)  # N+1's own write passes straight through
            async with Engine(svc.kernel, FAST) as engine:
                later.append(await engine.rotate([RotationRequest("app/race")]))
        await write(self, req)

    with mock.patch.object(OpenBaoSink, "write", overtaken):
        result = rotate(svc, "app/race").to_json()
    assert result["rotated"] == ["app/race"], result
    assert not result["warnings"], result
    assert later[0].to_json()["rotated"] == ["app/race"], later[0].to_json()
    assert not later[0].to_json()["warnings"], later[0].to_json()
    current = svc.get_value("app/race").reveal_text()
    assert bao.kv_read(path) == ({"password": current}, 2), "KV holds CURRENT, not N's value"
    [skipped] = sink_entries(svc, "app/race", "sink.skipped")
    assert skipped["reason"] == "superseded"

    # Someone writes between the sink's read and its write: the check-and-set refuses.
    call = OpenBaoSink._call
    theirs = "raced-in-by-the-other-writer"

    async def meddle(self: OpenBaoSink, client: Any, method: str, url: str, op: str, **kw: Any):  # type: ignore[no-untyped-def]
        if op == "write":
            bao.kv_write(path, {"password": theirs})
        return await call(self, client, method, url, op, **kw)

    with mock.patch.object(OpenBaoSink, "_call", meddle):
        result = rotate(svc, "app/race").to_json()
    assert "check-and-set failed" in result["warnings"][0]["warning"], result
    assert bao.kv_read(path) == ({"password": theirs}, 3)

    # Its latest version deleted (soft) by someone else: not written over either.
    bao.call("DELETE", f"secret/data/{path}").raise_for_status()
    result = rotate(svc, "app/race").to_json()
    assert "latest version was deleted" in result["warnings"][0]["warning"], result
    assert bao.kv_read(path) is None
    assert [f["reason"] for f in sink_entries(svc, "app/race", "sink.failed")] == [
        "conflict",
        "conflict",
    ]
    return [first, current, svc.get_value("app/race").reveal_text()]


def test_openbao_sink_logs_in_with_an_approle_secret_id_credential_and_reports_a_bad_token(
    svc: BlockingService,
    openbao_server: OpenBaoServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    bao = openbao_server
    path = f"app/{uuid.uuid4().hex[:12]}/api"
    secret_id = bao.new_secret_id()
    svc.add_credential("bao/secret-id", "local", value=ValueInput(value=Secret(secret_id)))
    svc.add_credential(
        "app/api",
        "local",
        value=ValueInput(generate=True),
        sinks=[
            f"openbao:addr={bao.addr},ca={bao.ca_file},path={path},key=password,"
            f"auth=approle,role_id={bao.role_id},secret_id=bao/secret-id"
        ],
    )
    # The operator put the credential's first value there, next to a key of their own.
    first = svc.get_value("app/api").reveal_text()
    bao.kv_write(path, {"username": "app", "password": first})
    tokens = token_accessors(bao)
    result = rotate(svc, "app/api").to_json()
    assert result["rotated"] == ["app/api"], result
    assert not result["warnings"], result
    value = svc.get_value("app/api").reveal_text()
    assert bao.kv_read(path) == ({"username": "app", "password": value}, 2)
    assert engine_reads(svc, "bao/secret-id") >= 1
    assert token_accessors(bao) == tokens, "the login's token was revoked after the write"

    # A token cached by the engine is revoked and its credential given a new one: the 403
    # drops the cached value and the write is retried once with the new token.
    old = bao.new_token()
    svc.add_credential("bao/cached", "local", value=ValueInput(value=Secret(old)))
    cached = f"app/{uuid.uuid4().hex[:12]}/cached"
    svc.add_credential(
        "app/cached",
        "local",
        value=ValueInput(generate=True),
        sinks=[f"openbao:addr={bao.addr},ca={bao.ca_file},path={cached},token=bao/cached"],
    )

    async def twice() -> tuple[BatchResult, BatchResult]:
        async with Engine(svc.kernel, FAST) as engine:
            one = await engine.rotate([RotationRequest("app/cached")])
            bao.call("POST", "auth/token/revoke", {"token": old}).raise_for_status()
            svc.update_credential("bao/cached", value=ValueInput(value=Secret(bao.new_token())))
            return one, await engine.rotate([RotationRequest("app/cached")])

    one, two = asyncio.run(twice())
    assert not one.to_json()["warnings"], one.to_json()
    assert not two.to_json()["warnings"], two.to_json()
    assert bao.kv_read(cached) == ({"value": svc.get_value("app/cached").reveal_text()}, 2)

    # A token credential that holds no valid token: reported, nothing written, nothing shown.
    wrong = "s." + uuid.uuid4().hex
    svc.add_credential("bao/wrong", "local", value=ValueInput(value=Secret(wrong)))
    svc.add_credential("bao/token", "local", value=ValueInput(value=Secret(bao.new_token())))
    other = f"app/{uuid.uuid4().hex[:12]}/other"
    svc.add_credential(
        "app/other",
        "local",
        value=ValueInput(generate=True),
        sinks=[
            f"openbao:addr={bao.addr},ca={bao.ca_file},path={other},token=bao/wrong",
            # Nothing listens there: retried, then reported as unavailable.
            f"openbao:addr=https://127.0.0.1:1,path={other},token=bao/token",
            # Its certificate is not trusted without ca=: said so, not retried.
            f"openbao:addr={bao.addr},path={other},token=bao/token",
        ],
    )
    result = rotate(svc, "app/other").to_json()
    assert result["rotated"] == ["app/other"]
    refused, unreachable, untrusted = (w["warning"] for w in result["warnings"])
    assert "permission denied" in refused
    assert "cannot reach https://127.0.0.1:1" in unreachable
    assert "TLS certificate" in untrusted
    assert "not trusted (set ca=)" in untrusted
    assert bao.kv_read(other) is None
    failed = sink_entries(svc, "app/other", "sink.failed")
    assert [(f["reason"], f["attempts"]) for f in failed] == [
        ("denied", 2),  # the token credential read afresh once
        ("unavailable", 3),
        ("error", 1),
    ]
    shown = audit_json(svc) + json.dumps(result) + caplog.text + "".join(capfd.readouterr())
    for secret in (secret_id, wrong, value, svc.get_value("app/other").reveal_text()):
        assert secret not in shown


def run_cli(args: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """The CLI's own ``main`` in this process (a subprocess per case would cost ~1 s each)."""
    from rotator.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, dict(env)),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_bad_openbao_sink_specs_exit_2_with_one_line_and_store_nothing(
    svc: BlockingService, settings: Settings, openbao_server: OpenBaoServer
) -> None:
    bao = openbao_server
    svc.add_credential("bao/token", "local", value=ValueInput(value=Secret("s.x")))
    base = f"openbao:addr={bao.addr},ca={bao.ca_file}"
    pasted = "s.Q2hpY2tlbiBpbiB0aGUga2l0Y2hlbg"  # a token, where its credential's name goes
    pasted_lower = "s.eb4e2c6d6d5f4a7c9a1d"  # looks like a name, but no credential has it
    env = {"ROTATOR_HOME": str(settings.home), "ROTATOR_DB": str(settings.db_url)}
    cases: list[tuple[str, str, dict[str, str]]] = [
        (f"{base},token=bao/token", "'path'", {}),
        (f"{base},path=app/x,auth=kerberos,token=bao/token", "'auth'", {}),
        (f"{base},path=app/x,token={pasted}", "NAME", {}),
        (f"{base},path=app/x,token={pasted_lower}", "NAME", {}),
        (f"{base},path=app/x,auth=approle,role_id=r,secret_id={pasted}", "NAME", {}),
        (f"{base},path=app/x,{pasted}", "not KEY=VALUE", {}),
        (f"{base},path=../sys,token=bao/token", "'path'", {}),
        ("openbao:addr=http://127.0.0.1:1,path=app/x,token=bao/token", "https", {}),
        (
            "openbao:addr=http://bao.example.com:8200,allow_insecure_http=true,path=app/x,"
            "token=bao/token",
            "only for a server on loopback",
            {},
        ),
        (
            f"{base},path=app/x,token=bao/token",
            "ROTATOR_HTTP_ALLOW_HOSTS",
            {"ROTATOR_HTTP_ALLOW_HOSTS": "bao.example.com"},
        ),
    ]
    svc.add_credential(
        "app/stored",
        "local",
        value=ValueInput(generate=True),
        sinks=[f"{base},path=app/stored,token=bao/token"],
    )
    names_before = [c.name for c in svc.list_credentials()]
    audit_before = len(svc.audit_entries())
    for spec, named, extra in cases:
        args = ["credential", "add", "app/new", "-c", "local", "--generate", "--sink", spec]
        code, out, err = run_cli(args, {**env, **extra})
        shown = f"--sink {spec}\nexit {code}\nstdout: {out}\nstderr: {err}"
        assert code == 2, shown
        assert out == "", shown
        assert len(err.splitlines()) == 1, shown
        assert "Traceback" not in err, shown
        assert named in err, shown
        assert pasted not in err, shown
        assert pasted_lower not in err, shown
    assert [c.name for c in svc.list_credentials()] == names_before
    assert len(svc.audit_entries()) == audit_before

    # The allow list changed after the sink was stored: listings still work; the rotation's
    # write is refused, audited and reported.
    narrowed = {"ROTATOR_HTTP_ALLOW_HOSTS": "bao.example.com"}
    for args in (["credential", "show", "app/stored"], ["credential", "list"]):
        code, out, err = run_cli(args, {**env, **narrowed})
        assert (code, err) == (0, ""), (args, code, err)
        assert "app/stored" in out
    with mock.patch.dict(os.environ, narrowed):
        result = rotate(svc, "app/stored").to_json()
    assert result["rotated"] == ["app/stored"], result
    [failed] = sink_entries(svc, "app/stored", "sink.failed")
    assert "ROTATOR_HTTP_ALLOW_HOSTS" in str(failed["error"])

    # A principal pastes an AppRole secret_id (a UUID: it passes as a name) that it may not
    # read: refused, and neither the message nor the audit entry holds it.
    secret_id = str(uuid.uuid4())
    svc.bind(Principal(name="alice", grants=(Grant(Role.ADMIN, "app/*"),)))
    try:
        with pytest.raises(PermissionDenied) as denied:
            svc.add_credential(
                "app/pasted",
                "local",
                value=ValueInput(generate=True),
                sinks=[f"{base},path=app/y,auth=approle,role_id=r,secret_id={secret_id}"],
            )
    finally:
        svc.bind(None)
    assert "permission denied" in str(denied.value)
    assert secret_id not in str(denied.value)
    assert "access.denied" in audit_json(svc)
    assert secret_id not in audit_json(svc)
    assert "app/pasted" not in [c.name for c in svc.list_credentials()]


@pytest.fixture
def trickling() -> Iterator[str]:
    """An HTTP server on loopback that answers every request one header byte at a time,
    never finishing (each byte arrives well within httpx's read timeout). Its address."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.02):
                conn.sendall(b"X")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    srv.close()


def test_a_trickling_openbao_bounds_each_attempt_and_an_emergency_revokes_before_the_sink(
    svc: BlockingService, trickling: str
) -> None:
    svc.add_credential("bao/token", "local", value=ValueInput(value=Secret("s.abc")))
    svc.add_credential(
        "app/slow",
        "local",
        value=ValueInput(generate=True),
        sinks=[
            f"openbao:addr={trickling},allow_insecure_http=true,path=app/slow,"
            "token=bao/token,timeout_s=0.2"
        ],
    )
    write = OpenBaoSink.write
    stages: list[dict[int, str]] = []

    async def watched(self: OpenBaoSink, req: SinkRequest) -> None:
        if not stages:  # the versions' stages when the sink is first called
            stages.append({v.number: str(v.stage) for v in svc.show("app/slow").versions})
        await write(self, req)

    async def go() -> BatchResult:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate([RotationRequest("app/slow", grace_s=0)])

    with mock.patch.object(OpenBaoSink, "write", watched):
        # Unbounded, the server would hold the rotation forever: 3 attempts of 4 x 0.2 s.
        result = asyncio.run(asyncio.wait_for(go(), 30)).to_json()
    assert result["rotated"] == ["app/slow"], result
    [warning] = result["warnings"]
    assert "took over 0.8 s" in warning["warning"]
    [failed] = sink_entries(svc, "app/slow", "sink.failed")
    assert (failed["reason"], failed["attempts"]) == ("unavailable", 3)
    assert stages == [{1: "RETIRED", 2: "CURRENT"}], "the old value revoked before the sink"
