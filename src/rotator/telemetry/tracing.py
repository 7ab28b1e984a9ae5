"""OpenTelemetry spans: one ``rotation`` span per rotation, a child ``step.<name>`` span per
step (create, set, test, finish, revoke, rollback).

Spans are not made at all until a tracer provider is given: :func:`configure_from_env`
installs the SDK with the OTLP HTTP exporter when ``ROTATOR_OTLP_ENDPOINT`` is set (the
``otlp`` extra, imported only then); a test or an embedding program may :func:`install` its
own provider. Attributes are names, kinds, ids and outcomes, never a value; an error is
recorded by its type, never its message.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

TRACER_NAME = "rotator"
ENDPOINT_ENV = "ROTATOR_OTLP_ENDPOINT"

# Rotator's tracer; None (the default) until :func:`install` or :func:`configure_from_env`:
# a span then costs a check, not OpenTelemetry's no-op machinery (~30 µs a span on this
# machine, ~150 µs a rotation).
_tracer: trace.Tracer | None = None
_configured = False
_NOOP: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)


def install(provider: trace.TracerProvider | None) -> None:
    """Record rotator's spans with ``provider`` from now on (None: stop recording)."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(TRACER_NAME)


def configure_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Install an SDK tracer provider exporting over OTLP/HTTP to ``ROTATOR_OTLP_ENDPOINT``
    (e.g. ``http://127.0.0.1:4318/v1/traces``) when it is set; spans then leave the process
    in batches, flushed at exit. Returns whether it installed one. Once per process."""
    global _configured
    endpoint = (os.environ if env is None else env).get(ENDPOINT_ENV, "").strip()
    if not endpoint or _configured:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "rotator"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    install(provider)
    atexit.register(provider.shutdown)
    _configured = True
    return True


def span(name: str, **attributes: str | int | None) -> AbstractContextManager[Span]:
    """A span named ``name``, current for the block (so spans started inside are its
    children); a non-recording span when no provider is installed. ``None`` attributes are
    left out. An exception escaping the block marks the span an error with the exception's
    type only (its message may quote anything)."""
    if _tracer is None:
        return _NOOP
    return _recording(_tracer, name, attributes)


@contextmanager
def _recording(
    tracer: trace.Tracer, name: str, attributes: Mapping[str, str | int | None]
) -> Iterator[Span]:
    attrs = {f"rotator.{k}": v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(
        name, attributes=attrs, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_attribute("error.type", type(exc).__name__)
            current.set_status(Status(StatusCode.ERROR))
            raise


def set_attributes(current: Span, **attributes: str | int | None) -> None:
    """Add ``rotator.<key>`` attributes to ``current``; None values are left out."""
    if not current.is_recording():
        return
    for k, v in attributes.items():
        if v is not None:
            current.set_attribute(f"rotator.{k}", v)
