"""A store seeded for the dashboard's tests: principals with tokens, credentials with tags,
a rotation history and a PREVIOUS in its grace, made in-process through the service."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.domain.secret import Secret
from rotator.service import BlockingService, EngineOptions, PolicyInput, ValueInput
from rotator.service.rotation import Selection

VALUE = "dash-s3cret-value-91ab"  # never expected in a page, a header or the server's log
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')

# One attempt per step: the seeded failing rotation fails in well under a second.
OPTIONS = EngineOptions(retry_attempts=1, retry_initial_s=0.01)
# An http credential whose API does not listen (port 9, discard): its rotation fails.
FAILING = "ext/partner/key"

PRINCIPALS = {
    "operator": Role.OPERATOR,
    "auditor": Role.AUDITOR,
    "admin": Role.ADMIN,
}
CREDENTIALS = {
    # name: (tags, every)
    "prod/payments/db": ({"env": "prod", "team": "pay"}, "30d"),
    "prod/search/api": ({"env": "prod", "team": "search"}, "12h"),
    "dev/tools/cache": ({"env": "dev"}, "7d"),
}


@dataclass
class Seeded:
    home: Path
    db_url: str
    tokens: dict[str, str]  # principal name -> API token


def seed(svc: BlockingService, home: Path, db_url: str) -> Seeded:
    """Principals (operator, auditor, admin; scope *), the credentials above (local
    connector, grace 10m, each with :data:`VALUE` as its first value), :data:`FAILING` (its
    rotation fails: open ``svc`` with :data:`OPTIONS` to keep that short), one rotation of
    prod/payments/db (so it has a PREVIOUS in its grace and a history), a checkpoint
    and a rollout of env=dev (pending: the server runs no scheduler)."""
    tokens = {}
    for name, role in PRINCIPALS.items():
        svc.add_principal(name, role, scope="*", kind="person")
        tokens[name] = svc.create_token(name)[1]
    for name, (tags, every) in CREDENTIALS.items():
        svc.add_credential(
            name,
            "local",
            tags=tags,
            policy=PolicyInput(every=every, grace="10m"),
            value=ValueInput(value=Secret(VALUE)),
        )
    svc.add_credential(
        FAILING,
        "http",
        settings={
            "base_url": "http://127.0.0.1:9",
            "allow_insecure_http": "true",
            "set_path": "/keys",
            "set_body": '{"key": "$value"}',
            "test_path": "/me",
            "revoke_path": "/keys/$version",
        },
        tags={"env": "ext"},
        value=ValueInput(value=Secret(VALUE)),
    )
    svc.rotate(Selection(names=["prod/payments/db", FAILING]))
    svc.make_checkpoint()
    svc.create_rollout(
        Selection(tags={"env": "dev"}), stagger=timedelta(hours=2), max_per_minute=10.0
    )
    return Seeded(home, db_url, tokens)


def settings(home: Path, db_url: str) -> Settings:
    return Settings(home=home, db_url=db_url)
