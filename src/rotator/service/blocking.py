"""A blocking facade over the async service, for synchronous callers (the CLI, scripts,
tests, applications without an event loop).

Each facade owns one event loop, run on a private thread for the facade's whole life, and the
service (with its engine) lives in it; every method submits the use case's coroutine to that
loop and waits for it. So the service's limits, breakers, pooled connector connections and
group-commit writer are shared by every call made through one facade, and a caller that runs
its own event loop can use the facade too (it blocks that loop while it waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import rotator.service as use_cases
from rotator.config import Settings
from rotator.domain.principal import LOCAL_PRINCIPAL, Principal
from rotator.kernel import Kernel, utcnow
from rotator.service.credentials import RotatorService
from rotator.store import Database

if TYPE_CHECKING:
    # At run time each of these modules is imported at the first call of one of its use cases
    # (see _later): a command pays at start-up only for what it calls.
    import rotator.service.access
    import rotator.service.backup
    import rotator.service.checkpoints
    import rotator.service.events
    import rotator.service.evidence
    import rotator.service.forwarding
    import rotator.service.jobs
    import rotator.service.policies
    import rotator.service.reports
    import rotator.service.rollouts
    import rotator.service.rotation
    import rotator.service.webhooks
    from rotator.engine.options import EngineOptions
    from rotator.engine.types import BatchResult
    from rotator.scheduler import SchedulerOptions

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


# A use case, whether it takes ``principal``, and its position (see _Blocking._resolve).
_Resolved = tuple[
    Callable[Concatenate["RotatorService", P], Coroutine[Any, Any, R]], bool, "int | None"
]


class _Blocking(Generic[P, R]):
    """A use case ``fn(service, ...)`` as a blocking method of the facade. When the facade
    has a bound principal (:meth:`BlockingService.bind`) and the use case takes
    ``principal``, the call gets ``principal=`` the bound one unless the caller gave one."""

    def __init__(self, fn: Callable[Concatenate[RotatorService, P], Coroutine[Any, Any, R]]):
        self._get: Callable[[], Callable[Concatenate[RotatorService, P], Coroutine[Any, Any, R]]]
        self._get = lambda: fn
        self._resolved: _Resolved[P, R] | None = None
        self.__doc__ = fn.__doc__

    def _resolve(self) -> _Resolved[P, R]:
        # Computed into locals and published in one assignment: threads that resolve at
        # once each get a complete, equal answer (never a half-set one).
        resolved = self._resolved
        if resolved is None:
            fn = self._get()
            params = list(inspect.signature(fn).parameters.values())[1:]  # after the service
            # How many positional arguments reach ``principal`` (None: it is keyword-only or
            # there is none), to tell whether a caller passed it positionally.
            principal_at: int | None = None
            takes_principal = False
            for i, prm in enumerate(params):
                if prm.name == "principal":
                    takes_principal = True
                    if prm.kind is not inspect.Parameter.KEYWORD_ONLY:
                        principal_at = i
            resolved = self._resolved = (fn, takes_principal, principal_at)
        return resolved

    @property
    def fn(self) -> Callable[Concatenate[RotatorService, P], Coroutine[Any, Any, R]]:
        return self._resolve()[0]

    def __get__(self, facade: BlockingService, owner: type | None = None) -> Callable[P, R]:
        fn, bind, at = self._resolve()

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = facade.principal
            if (
                bind
                and bound is not None
                and "principal" not in kwargs
                and (at is None or len(args) <= at)
            ):
                kwargs["principal"] = bound
            return facade.run(fn(facade.service, *args, **kwargs))

        return call


def _later(
    get: Callable[[], Callable[Concatenate[RotatorService, P], Coroutine[Any, Any, R]]],
) -> _Blocking[P, R]:
    """:class:`_Blocking` of the use case ``get()`` returns, looked up (and its module
    imported) at the first call, not when this module is imported."""
    blocking: _Blocking[P, R] = _Blocking.__new__(_Blocking)
    blocking._get = get
    blocking._resolved = None
    return blocking


def fast_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed (``uvicorn[standard]`` brings it), else
    asyncio's. For ``rotator serve``: it cut the server's CPU per GET value by ~20%
    (docs/benchmarks.md). Short CLI commands keep asyncio's loop (importing uvloop costs
    more than it saves)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BlockingService:
    """The service's use cases as blocking calls; see the module docstring. Close it with
    :meth:`close` (or use ``with``)."""

    def __init__(
        self,
        make: Callable[[], Coroutine[Any, Any, RotatorService]],
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self._loop = loop_factory()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rotator-service", daemon=True
        )
        self._thread.start()
        self.principal: Principal | None = None
        try:
            self.service = self.run(make())
        except BaseException:
            self._stop_loop()
            raise

    @classmethod
    def open(
        cls,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        options: EngineOptions | None = None,
        *,
        fast_loop: bool = False,
    ) -> BlockingService:
        """See :meth:`RotatorService.open`. ``fast_loop``: run the service on
        :func:`fast_event_loop` (for a long-running server)."""
        return cls(
            lambda: RotatorService.open(settings, clock, options),
            loop_factory=fast_event_loop if fast_loop else asyncio.new_event_loop,
        )

    @classmethod
    def init(
        cls,
        settings: Settings,
        principal: Principal = LOCAL_PRINCIPAL,
        options: EngineOptions | None = None,
    ) -> tuple[BlockingService, bool]:
        """See :meth:`RotatorService.init`."""
        created: list[bool] = []

        async def make() -> RotatorService:
            svc, was_created = await RotatorService.init(settings, principal, options)
            created.append(was_created)
            return svc

        return cls(make), created[0]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the facade's loop and return its result (or raise its error). An
        interrupt (Ctrl-C) cancels it and waits until it has unwound (its rollbacks and audit
        entries written) before re-raising; a second interrupt stops waiting.

        Callbacks a use case is given (``progress``, ``on_batch``) run on the facade's loop
        thread: they must not call the facade (RuntimeError, instead of a deadlock)."""
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("a BlockingService method was called from its own loop thread")
        unwound = threading.Event()

        async def wrapped() -> T:
            try:
                return await coro
            finally:
                unwound.set()

        fut = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        try:
            return fut.result()
        except KeyboardInterrupt:
            fut.cancel()
            unwound.wait()
            raise

    def close(self) -> None:
        """Finish queued writes, close connections, the store and the loop. Idempotent.
        Rotation jobs still running on the facade's loop end recorded as interrupted."""
        if self._loop.is_closed():
            return
        try:
            # Jobs run only through rotator.service.jobs: not imported, none to stop.
            if "rotator.service.jobs" in sys.modules:
                self.run(use_cases.jobs.stop_jobs(self.service))
            self.run(self.service.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bind(self, principal: Principal | None) -> None:
        """Make every later use case called through this facade act as ``principal`` (unless
        the call names one): the CLI binds the token's principal, or the owner in
        ``ROTATOR_TENANT``, once, so no command can forget to pass it. None unbinds."""
        self.principal = principal

    @property
    def kernel(self) -> Kernel:
        return self.service.kernel

    @property
    def db(self) -> Database:
        return self.service.db

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def clock(self) -> datetime:
        return self.service.clock()

    def serve(
        self,
        *,
        poll_s: float = 5.0,
        on_batch: Callable[[BatchResult], None] | None = None,
        options: SchedulerOptions | None = None,
        principal: Principal | None = None,
    ) -> None:
        """Run the scheduler loop until SIGINT or SIGTERM (call from the main thread); see
        rotation.serve (a second worker on a SQLite store is refused). ``principal`` None:
        the bound one (:meth:`bind`), else the owner."""
        if principal is None:
            principal = self.principal or LOCAL_PRINCIPAL
        with self.until_signal() as stop:
            self.run(
                use_cases.rotation.serve(
                    self.service,
                    stop,
                    poll_s=poll_s,
                    on_batch=on_batch,
                    options=options,
                    principal=principal,
                )
            )

    def run_forwarders(
        self,
        *,
        once: bool = False,
        give_up_after: int | None = None,
        poll_s: float = 1.0,
        principal: Principal | None = None,
    ) -> rotator.service.forwarding.RunStats:
        """Work the SIEM forwarders until SIGINT or SIGTERM, or (``once``) until caught up
        (call from the main thread); see forwarding.run_forwarders. ``principal`` None: the
        bound one (:meth:`bind`), else the owner."""
        if principal is None:
            principal = self.principal or LOCAL_PRINCIPAL
        with self.until_signal() as stop:
            return self.run(
                use_cases.forwarding.run_forwarders(
                    self.service,
                    stop,
                    once=once,
                    give_up_after=give_up_after,
                    poll_s=poll_s,
                    principal=principal,
                )
            )

    def run_webhooks(
        self,
        *,
        once: bool = False,
        poll_s: float = 1.0,
        principal: Principal | None = None,
        **kw: Any,
    ) -> rotator.service.webhooks.RunStats:
        """Work the webhooks until SIGINT or SIGTERM, or (``once``) until caught up (call from
        the main thread); see webhooks.run_webhooks (``kw``: timing, overdue_after, lease_s).
        ``principal`` None: the bound one, else the owner."""
        if principal is None:
            principal = self.principal or LOCAL_PRINCIPAL
        with self.until_signal() as stop:
            return self.run(
                use_cases.webhooks.run_webhooks(
                    self.service, stop, once=once, poll_s=poll_s, principal=principal, **kw
                )
            )

    @contextlib.contextmanager
    def until_signal(self) -> Iterator[asyncio.Event]:
        """An event in the service's loop that SIGINT or SIGTERM sets, for the block's life
        (the previous handlers come back after it). Call from the main thread."""
        stop = self.run(_new_event())
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: self._loop.call_soon_threadsafe(stop.set))
        try:
            yield stop
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- the use cases ------------------------------------------------------------------------

    tenant = _Blocking(RotatorService.tenant)
    add_credential = _Blocking(RotatorService.add_credential)
    list_credentials = _Blocking(RotatorService.list_credentials)
    show = _Blocking(RotatorService.show)
    get_value = _Blocking(RotatorService.get_value)
    update_credential = _Blocking(RotatorService.update_credential)
    report_usage = _Blocking(RotatorService.report_usage)
    set_policy_default = _later(lambda: use_cases.policies.set_default)
    list_policy_defaults = _later(lambda: use_cases.policies.list_defaults)
    remove_policy_default = _later(lambda: use_cases.policies.remove_default)
    remove_credential = _Blocking(RotatorService.remove_credential)
    add_group = _Blocking(RotatorService.add_group)
    get_group = _Blocking(RotatorService.get_group)
    list_groups = _Blocking(RotatorService.list_groups)
    remove_group = _Blocking(RotatorService.remove_group)
    rotate_master_key = _Blocking(RotatorService.rotate_master_key)
    audit_entries = _Blocking(RotatorService.audit_entries)
    audit_verify = _Blocking(RotatorService.audit_verify)
    audit_head = _Blocking(RotatorService.audit_head)
    make_checkpoint = _later(lambda: use_cases.checkpoints.make_checkpoint)
    list_checkpoints = _later(lambda: use_cases.checkpoints.list_checkpoints)
    audit_public_keys = _later(lambda: use_cases.checkpoints.public_keys)
    audit_export = _later(lambda: use_cases.checkpoints.export)
    rotation_evidence = _later(lambda: use_cases.evidence.evidence)
    select = _later(lambda: use_cases.rotation.select)
    plan = _later(lambda: use_cases.rotation.plan)
    plan_group = _later(lambda: use_cases.rotation.plan_group)
    rotate = _later(lambda: use_cases.rotation.rotate)
    rotate_group = _later(lambda: use_cases.rotation.rotate_group)
    recover = _later(lambda: use_cases.rotation.recover)
    start_job = _later(lambda: use_cases.jobs.start_job)
    get_job = _later(lambda: use_cases.jobs.get_job)
    list_jobs = _later(lambda: use_cases.jobs.list_jobs)
    create_rollout = _later(lambda: use_cases.rollouts.create)
    list_rollouts = _later(lambda: use_cases.rollouts.list_rollouts)
    rollout_status = _later(lambda: use_cases.rollouts.status)
    resume_rollout = _later(lambda: use_cases.rollouts.resume)
    abort_rollout = _later(lambda: use_cases.rollouts.abort)
    run_rollout = _later(lambda: use_cases.rollouts.run)
    report_event = _later(lambda: use_cases.events.report_event)
    list_events = _later(lambda: use_cases.events.list_events)
    add_forwarder = _later(lambda: use_cases.forwarding.add_forwarder)
    list_forwarders = _later(lambda: use_cases.forwarding.list_forwarders)
    remove_forwarder = _later(lambda: use_cases.forwarding.remove_forwarder)
    add_webhook = _later(lambda: use_cases.webhooks.add_webhook)
    list_webhooks = _later(lambda: use_cases.webhooks.list_webhooks)
    remove_webhook = _later(lambda: use_cases.webhooks.remove_webhook)
    webhook_dead_letters = _later(lambda: use_cases.webhooks.dead_letters)
    retry_webhook_dead_letters = _later(lambda: use_cases.webhooks.retry_dead_letters)
    compliance_report = _later(lambda: use_cases.reports.compliance_report)
    add_principal = _later(lambda: use_cases.access.add_principal)
    list_principals = _later(lambda: use_cases.access.list_principals)
    remove_principal = _later(lambda: use_cases.access.remove_principal)
    create_token = _later(lambda: use_cases.access.create_token)
    list_tokens = _later(lambda: use_cases.access.list_tokens)
    revoke_token = _later(lambda: use_cases.access.revoke_token)
    authenticate = _later(lambda: use_cases.access.authenticate)
    authorize_tenant = _Blocking(RotatorService.authorize_tenant)
    add_tenant = _later(lambda: use_cases.access.add_tenant)
    list_tenants = _later(lambda: use_cases.access.list_tenants)
    backup_store = _later(lambda: use_cases.backup.backup)
    export_key_shares = _later(lambda: use_cases.backup.export_shares)


async def _new_event() -> asyncio.Event:
    return asyncio.Event()
