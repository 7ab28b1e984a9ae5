"""Observability below the engine: Prometheus metrics (``metrics``), OpenTelemetry spans
(``tracing``) and structured logs that never carry a value (``logs``).

It imports only the stdlib, prometheus_client, opentelemetry, structlog and rotator's domain
and errors, so the engine can call it at its seams and the interfaces can expose it; what it
needs of the store (credential ages) it is handed by the caller.
"""
