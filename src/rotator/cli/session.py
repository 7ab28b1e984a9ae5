"""What the command line needs besides its parser: the environment it reads, the service it
opens as the caller, and the one-line report of an error with its exit code.

Imports no typer (nor click or pydantic): ``rotator.cli.fast`` runs ``credential get`` with
this module alone, ``rotator.cli.app`` re-exports it for the typer commands.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rotator.config import Settings
from rotator.domain import names
from rotator.domain.model import DEFAULT_TENANT, Stage
from rotator.domain.principal import LOCAL_PRINCIPAL, Principal
from rotator.errors import (
    AlreadyExists,
    AuthenticationFailed,
    ConfigError,
    CryptoError,
    IntegrityError,
    InvalidInput,
    NotFound,
    NotInitialized,
    PermissionDenied,
    RotatorError,
    StoreUnavailable,
)
from rotator.service.blocking import BlockingService

if TYPE_CHECKING:
    from rotator.domain.secret import Secret
    from rotator.service import EngineOptions

BAD_INPUT = (
    InvalidInput,
    NotFound,
    AlreadyExists,
    NotInitialized,
    ConfigError,
    CryptoError,
    StoreUnavailable,
    PermissionDenied,
    AuthenticationFailed,
)


TOKEN_ENV = "ROTATOR_TOKEN"  # noqa: S105 (the variable's name, not a token)
TENANT_ENV = "ROTATOR_TENANT"


log = logging.getLogger("rotator.cli")


@contextmanager
def service(
    options: EngineOptions | None = None, *, fast_loop: bool = False
) -> Iterator[BlockingService]:
    """The service, acting as the caller (see :func:`acting_principal`) in every use case
    called through it. ``fast_loop``: run it on uvloop when installed (``rotator serve``)."""
    svc = BlockingService.open(Settings.from_env(), options=options, fast_loop=fast_loop)
    try:
        svc.bind(acting_principal(svc))
        yield svc
    finally:
        svc.close()


URL_ENV = "ROTATOR_URL"
CA_ENV = "ROTATOR_CA_FILE"


def remote_url(env: Mapping[str, str] | None = None) -> str | None:
    """``ROTATOR_URL`` when set (not blank): the CLI then talks to that server."""
    env = os.environ if env is None else env
    url = (env.get(URL_ENV) or "").strip()
    return url or None


def acting_principal(svc: BlockingService, env: Mapping[str, str] | None = None) -> Principal:
    """Who the CLI acts as: with ``ROTATOR_TOKEN``, the token's principal (a bad token raises
    AuthenticationFailed; a ``ROTATOR_TENANT`` other than the token's tenant raises
    PermissionDenied, audited with the token id); without, the store's owner in
    ``ROTATOR_TENANT`` (default ``default``). ``ROTATOR_TOKEN`` set but empty (or blank) is
    InvalidInput: it must never fall back to the owner."""
    env = os.environ if env is None else env
    raw_token = env.get(TOKEN_ENV)
    if raw_token is not None and not raw_token.strip():
        raise InvalidInput(f"{TOKEN_ENV} is set but empty: unset it to act as the store's owner")
    token = raw_token or None
    tenant = env.get(TENANT_ENV) or None
    if tenant is not None:
        names.check_tenant_name(tenant)
    if token is None:
        return LOCAL_PRINCIPAL.with_tenant(tenant or DEFAULT_TENANT)
    principal = svc.authenticate(token)
    if tenant is not None:
        svc.authorize_tenant(principal, tenant)
    return principal


def parse_stage(stage: str) -> Stage:
    """``credential get --stage``'s value, any case; InvalidInput naming it otherwise."""
    try:
        return Stage(stage.upper())
    except ValueError:
        raise InvalidInput(f"--stage must be CURRENT, PREVIOUS or PENDING, not {stage!r}") from None


def write_value(value: Secret) -> None:
    """Print ``value`` (``credential get``): its bytes and a newline, flushed."""
    sys.stdout.buffer.write(value.reveal() + b"\n")
    sys.stdout.flush()


def exit_code(exc: BaseException) -> int:
    """Report ``exc``, an error a command raised (not the parser's), as one line on stderr
    and return its exit code: 1 the operation failed, 2 bad input, 130 interrupted."""
    if isinstance(exc, IntegrityError):  # tampered data: the operation failed, the input was fine
        print(f"rotator: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, BAD_INPUT):
        print(f"rotator: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, RotatorError):
        print(f"rotator: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, KeyboardInterrupt):
        print("rotator: interrupted", file=sys.stderr)
        return 130
    # The last resort: a defect must not show a user a traceback (whose messages may quote
    # a value). One line here; the stack, without any exception's message, goes to the
    # debug log, which exists only with ROTATOR_DEBUG set.
    print(
        f"rotator: error: internal error ({type(exc).__name__}); details in the debug log "
        "(set ROTATOR_DEBUG=1)",
        file=sys.stderr,
        flush=True,
    )
    log_internal_error(exc)
    return 1


def log_internal_error(exc: BaseException) -> None:
    """Log ``exc``'s stack at debug level: frames and exception types only, never a message
    (an exception's text may hold a value: a UnicodeDecodeError quotes the bytes it met)."""
    if not os.environ.get("ROTATOR_DEBUG"):
        return
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rotator: debug: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.propagate = False
    lines: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        lines.append(f"{type(cur).__module__}.{type(cur).__qualname__} (message withheld)")
        lines.extend(traceback.format_tb(cur.__traceback__))
        cur = cur.__cause__ or cur.__context__
    log.debug(
        "internal error, most recent call last per exception:\n%s",
        "".join(line if line.endswith("\n") else line + "\n" for line in lines),
    )
