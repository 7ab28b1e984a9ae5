"""OpenTelemetry spans of a rotation (issue 11, item 5): one ``rotation`` span, a child span
per step, names and attributes a trace backend can group by, and no value anywhere.

Rotator's tracer is swapped, for one test, for one of an SDK provider with the in-memory
exporter; each test reads the spans of its own rotation. With
``ROTATOR_OTLP_ENDPOINT`` set, the real CLI exports the same tree over OTLP/HTTP to a local
receiver.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.service import BlockingService, ValueInput
from rotator.service.rotation import Selection
from rotator.telemetry import tracing

ROTATOR = str(Path(sys.executable).parent / "rotator")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK provider exporting to memory, used by rotator's tracer for this test only (the
    process-wide provider can be set once, and would keep recording for every later test)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


def _attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def _rotation_tree(
    exporter: InMemorySpanExporter,
) -> tuple[ReadableSpan, list[ReadableSpan]]:
    finished = exporter.get_finished_spans()
    roots = [s for s in finished if s.name == "rotation"]
    assert len(roots) == 1, [s.name for s in finished]
    root = roots[0]
    assert root.context is not None
    children = [
        s for s in finished if s.parent is not None and s.parent.span_id == root.context.span_id
    ]
    return root, sorted(children, key=lambda s: s.start_time or 0)


def _no_value_in(spans: list[ReadableSpan], values: list[str]) -> None:
    for s in spans:
        text = repr(_attrs(s)) + s.name + repr([e.attributes for e in s.events])
        for v in values:
            assert v not in text, f"a value in span {s.name}"


def test_one_rotation_is_one_rotation_span_with_a_child_span_per_step(
    svc: BlockingService, spans: InMemorySpanExporter
) -> None:
    old = Secret("tracing-old-value-7d2e")
    svc.add_credential("app/db", "local", value=ValueInput(value=old))
    spans.clear()  # adding makes no rotation; the tree below is the rotation's alone

    batch = svc.rotate(Selection(names=["app/db"]))

    [res] = batch.results
    assert res.outcome.value == "rotated"
    root, children = _rotation_tree(spans)
    assert root.parent is None
    assert _attrs(root) == {
        "rotator.credential": "app/db",
        "rotator.tenant": "default",
        "rotator.trigger": "manual",
        "rotator.connector": "local",
        "rotator.rotation_id": res.rotation_id,
        "rotator.result": "rotated",
    }
    assert [c.name for c in children] == ["step.create", "step.set", "step.test", "step.finish"]
    assert root.context is not None
    for child in children:
        assert child.context is not None
        assert child.context.trace_id == root.context.trace_id
        assert _attrs(child) == {
            "rotator.step": child.name.removeprefix("step."),
            "rotator.connector": "local",
            "rotator.attempts": 1,
            "rotator.outcome": "ok",
        }
    new = svc.get_value("app/db", Stage.CURRENT).reveal_text()
    _no_value_in(list(spans.get_finished_spans()), [old.reveal_text(), new])


def test_an_emergency_rotation_revokes_the_old_value_in_a_child_span_of_its_rotation(
    svc: BlockingService, spans: InMemorySpanExporter
) -> None:
    svc.add_credential("app/key", "local", value=ValueInput(generate=True))
    old = svc.get_value("app/key", Stage.CURRENT).reveal_text()
    spans.clear()

    batch = svc.rotate(Selection(names=["app/key"]), emergency=True)

    [res] = batch.results
    assert res.outcome.value == "rotated"
    root, children = _rotation_tree(spans)
    assert _attrs(root)["rotator.trigger"] == "emergency"
    assert [c.name for c in children] == [
        "step.create",
        "step.set",
        "step.test",
        "step.finish",
        "step.revoke",
    ]
    new = svc.get_value("app/key", Stage.CURRENT).reveal_text()
    _no_value_in(list(spans.get_finished_spans()), [old, new])


class _Collector(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver: keeps each request's decoded spans."""

    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_with_an_otlp_endpoint_a_cli_rotation_exports_its_span_tree(
    settings: Settings,
) -> None:
    handler = type("Collector", (_Collector,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "OTEL_"))},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }

    def cli(*args: str, stdin: str = "", otlp: bool = False) -> str:
        extra = {"ROTATOR_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}/v1/traces"}
        proc = subprocess.run(
            [ROTATOR, *args],
            env={**env, **extra} if otlp else env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    value = "otlp-first-value-3a9d"
    try:
        cli("init")
        cli("credential", "add", "app/db", "--connector", "local", "--value-stdin", stdin=value)
        assert handler.received == []  # no endpoint, no export
        cli("rotate", "app/db", otlp=True)
    finally:
        server.shutdown()
        thread.join()

    spans = [
        span
        for request in handler.received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    by_name = {s.name: s for s in spans}
    assert sorted(by_name) == sorted(
        ["rotation", "step.create", "step.set", "step.test", "step.finish"]
    )
    root = by_name["rotation"]
    assert root.parent_span_id == b""
    for name in ("step.create", "step.set", "step.test", "step.finish"):
        assert by_name[name].parent_span_id == root.span_id
        assert by_name[name].trace_id == root.trace_id
    attrs = {a.key: a.value.string_value for a in root.attributes}
    assert attrs["rotator.credential"] == "app/db"
    assert attrs["rotator.result"] == "rotated"
    new = cli("credential", "get", "app/db").strip()
    wire = b"".join(r.SerializeToString() for r in handler.received)
    assert value.encode() not in wire
    assert new.encode() not in wire
