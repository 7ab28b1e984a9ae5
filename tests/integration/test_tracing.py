"""OpenTelemetry spans of a rotation (issue 11, item 5): one ``rotation`` span, a child span
per step, names and attributes a trace backend can group by, and no value anywhere.

The SDK's in-memory exporter is installed as the process's tracer provider once (OpenTelemetry
allows one per process); each test clears it and reads the spans of its own rotation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.service import BlockingService, ValueInput
from rotator.service.rotation import Selection

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    assert isinstance(trace.get_tracer_provider(), TracerProvider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


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
