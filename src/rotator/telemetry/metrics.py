"""Prometheus metrics of one rotator process, in their own registry (not the global one).

The engine calls the small functions here at its seams (a step's end, a rotation's outcome,
admission, a breaker's verdict, a value read): each is one counter, gauge or histogram update,
no lock beyond prometheus_client's own. Figures that come from the store (credential age,
overdue credentials) are computed at scrape time from a snapshot the caller supplies
(:func:`render`), so this package never reads the store and per-credential series never
exist (their cardinality would grow with the store).

No label ever holds a value: labels are a result, a connector kind, a trigger, a step, a
tenant name, or a target as the connector names it (scheme, host and port), with any
``user:password@`` part cut off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

ROTATIONS = Counter(
    "rotator_rotations",
    "Rotations ended in this process, by result (rotated, failed, rolled_back, skipped), "
    "connector kind and trigger.",
    ["result", "connector", "trigger"],
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "rotator_step_duration_seconds",
    "Duration of one attempt of a rotation step (create, set, test, finish, revoke, rollback) "
    "by connector kind.",
    ["step", "connector"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "rotator_rotations_in_flight",
    "Rotations this process is running now (admitted into the engine's limit).",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "rotator_queue_depth",
    "Rotations waiting for admission into the engine's concurrency limit.",
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "rotator_breaker_state",
    "Circuit breaker of a target as last seen: 0 closed, 1 half-open, 2 open.",
    ["target"],
    registry=REGISTRY,
)
VALUE_READS = Counter(
    "rotator_value_reads",
    "Credential values read (audited reads), by tenant; rate() gives reads per second.",
    ["tenant"],
    registry=REGISTRY,
)

_BREAKER_CODES = {"closed": 0, "half-open": 1, "open": 2}
_USERINFO = re.compile(r"//[^/@]*@")


def target_label(target: str) -> str:
    """``target`` as a label: a connector's target key (``postgres://host:port``), with any
    ``user:password@`` cut off in case a third-party connector put one there."""
    return _USERINFO.sub("//", target)


# The labelled children, cached: ``labels()`` takes the metric's lock and builds a key on
# every call (a few µs); a dict lookup does not. Label sets are few (steps x connectors).
_rotations: dict[tuple[str, str, str], Any] = {}
_steps: dict[tuple[str, str], Any] = {}
_breakers: dict[str, Any] = {}
_reads: dict[str, Any] = {}


def rotation_ended(result: str, connector: str, trigger: str) -> None:
    key = (result, connector, trigger)
    child = _rotations.get(key)
    if child is None:
        child = _rotations[key] = ROTATIONS.labels(*key)
    child.inc()


def step_observed(step: str, connector: str, seconds: float) -> None:
    key = (step, connector)
    child = _steps.get(key)
    if child is None:
        child = _steps[key] = STEP_SECONDS.labels(*key)
    child.observe(seconds)


def breaker_seen(target: str, state: str) -> None:
    """Record a breaker's state (``closed``, ``half-open``, ``open``) after a verdict."""
    child = _breakers.get(target)
    if child is None:
        child = _breakers[target] = BREAKER_STATE.labels(target_label(target))
    child.set(_BREAKER_CODES.get(state, 2))


def value_read(tenant: str) -> None:
    child = _reads.get(tenant)
    if child is None:
        child = _reads[tenant] = VALUE_READS.labels(tenant)
    child.inc()


# -- scrape-time figures from the store ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """Aggregate figures of one tenant's credentials at scrape time (no names, no values).
    ``max_age_s``: the age of the oldest CURRENT version (None when there is none)."""

    tenant: str
    credentials: int
    overdue: int
    max_age_s: float | None


class CredentialCollector(Collector):
    """Gauges per tenant from ``snapshot()``, called on every collect (at scrape)."""

    def __init__(self, snapshot: Callable[[], Iterable[TenantCredentials]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # registering must not call the snapshot (it reads the store)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        count = GaugeMetricFamily(
            "rotator_credentials", "Credentials managed, by tenant.", labels=["tenant"]
        )
        overdue = GaugeMetricFamily(
            "rotator_credentials_overdue",
            "Credentials overdue for rotation (past their next rotation time or older than "
            "their policy allows, as the compliance report counts them), by tenant.",
            labels=["tenant"],
        )
        age = GaugeMetricFamily(
            "rotator_credential_age_seconds_max",
            "Age of the oldest CURRENT version, by tenant.",
            labels=["tenant"],
        )
        for t in self._snapshot():
            count.add_metric([t.tenant], t.credentials)
            overdue.add_metric([t.tenant], t.overdue)
            if t.max_age_s is not None:
                age.add_metric([t.tenant], t.max_age_s)
        yield count
        yield overdue
        yield age


def render(snapshot: Iterable[TenantCredentials] | None = None) -> bytes:
    """The Prometheus text exposition of this process's metrics, plus the per-tenant
    credential figures of ``snapshot`` when given."""
    body = generate_latest(REGISTRY)
    if snapshot is not None:
        figures = list(snapshot)
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(CredentialCollector(lambda: figures))
        body += generate_latest(scrape)
    return body


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
