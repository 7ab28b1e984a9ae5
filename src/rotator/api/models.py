"""Request and response bodies of the REST API (pydantic), so /openapi.json documents every
field. Request models forbid unknown fields (a typo is a 422, not silently ignored) and map
onto the service's inputs (PolicyInput, ValueInput); parsing and checking stay the
service's, as for the CLI. A value is a SecretStr: never in a repr or a validation error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from rotator.domain import names
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput
from rotator.service.inputs import PolicyInput, ValueInput

_TEXT = 1024  # the longest option text the CLI takes (a setting or tag value)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


class RequestBody(BaseModel):
    """The base of every request body: unknown fields refused, and every string (a value, a
    tag, a dict key...) encodable as UTF-8. JSON's ``"\\ud800"`` escape decodes to a lone
    surrogate, which nothing downstream can store: a 422 naming the field, never the text."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _unicode_text(cls, value: Any) -> Any:
        for text in _strings(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("not valid Unicode text (a lone surrogate)") from None
        return value


_Request = RequestBody


class PolicyBody(_Request):
    """Policy options, as the CLI flags of `credential add` take them; omitted: not given
    (inherited on add, kept on update)."""

    every: str | None = Field(None, max_length=64, description="Rotate every (`30d`, `12h`).")
    cron: str | None = Field(None, max_length=256, description="Cron schedule (`0 3 * * 0`).")
    window: str | None = Field(None, max_length=64, description="Window after each cron time.")
    grace: str | None = Field(None, max_length=64, description="How long PREVIOUS stays valid.")
    max_uses: int | None = Field(None, description="Rotate after this many uses.")
    jitter: str | None = Field(None, max_length=64, description="Random delay up to this.")
    blackout: list[str] | None = Field(
        None, max_length=64, description="Blackout windows; replaces all when given."
    )
    tz: str | None = Field(None, max_length=64, description="Time zone of cron and blackouts.")
    max_age: str | None = Field(None, max_length=64, description="Oldest a value may get.")
    on_risk: str | None = Field(
        None, max_length=256, description="Risk rules, e.g. `high=rotate,critical=emergency`."
    )
    risk_cooldown: str | None = Field(
        None, max_length=64, description="Shortest time between risk rotations."
    )

    def to_input(self) -> PolicyInput:
        """The service's PolicyInput, checked (PolicyError, an InvalidInput, names the first
        bad option)."""
        policy = PolicyInput(
            every=self.every,
            cron=self.cron,
            window=self.window,
            grace=self.grace,
            max_uses=self.max_uses,
            jitter=self.jitter,
            blackout=None if self.blackout is None else tuple(self.blackout),
            tz=self.tz,
            max_age=self.max_age,
            on_risk=self.on_risk,
            risk_cooldown=self.risk_cooldown,
        )
        policy.partial()
        return policy


def _pairs(given: dict[str, str], what: str) -> dict[str, str]:
    # The CLI's KEY=VALUE parser checks keys and value lengths; a key holding "=" would be
    # split there, so it is refused first.
    key_re = names.TAG_KEY if what == "tags" else names.CONFIG_KEY
    for key in given:
        if "=" in key:
            raise InvalidInput(f"malformed {what} key: expected a key like {key_re.pattern}")
    return names.parse_pairs([f"{k}={v}" for k, v in given.items()], what, key_re)


class _CredentialFields(_Request):
    settings: dict[str, str] | None = Field(
        None, description="Connector settings (`--set KEY=VALUE`); replaces all when given."
    )
    tags: dict[str, str] | None = Field(
        None, description="Tags (`--tag KEY=VALUE`); replaces all when given."
    )
    policy: PolicyBody | None = Field(None, description="Policy options.")
    value: SecretStr | None = Field(
        None,
        max_length=65536,
        description="The value to store as the new CURRENT version (excludes `generate`).",
    )
    generate: bool = Field(False, description="Let the connector make a new value.")
    sinks: list[str] | None = Field(
        None, max_length=32, description="Where the value is also written (`file:/path`)."
    )

    def settings_input(self) -> dict[str, str] | None:
        return None if self.settings is None else _pairs(self.settings, "settings")

    def tags_input(self) -> dict[str, str] | None:
        return None if self.tags is None else _pairs(self.tags, "tags")

    def policy_input(self) -> PolicyInput:
        return PolicyInput() if self.policy is None else self.policy.to_input()

    def value_input(self) -> ValueInput:
        if self.value is not None and self.generate:
            raise InvalidInput("give a value or generate, not both")
        if self.value is None:
            return ValueInput(generate=self.generate)
        return ValueInput(value=Secret(self.value.get_secret_value().encode("utf-8")))


class CredentialCreate(_CredentialFields):
    """`POST /v1/credentials`: as `rotator credential add`."""

    name: str = Field(max_length=200, description="Credential name, e.g. `prod/payments/db`.")
    connector: str = Field(max_length=64, description="Connector kind (`local`, `postgres`...).")
    verify: bool = Field(False, description="Check the target before storing anything.")


class CredentialUpdate(_CredentialFields):
    """`PATCH /v1/credentials/{name}`: as `rotator credential update`; omitted fields keep."""

    connector: str | None = Field(None, max_length=64, description="New connector kind.")


class UsageBody(_Request):
    """`POST /v1/credentials/{name}/usage`: uses an application reports."""

    count: int = Field(1, description="How many uses to record (1..1000000000).")


# -- responses -------------------------------------------------------------------------------


class Problem(BaseModel):
    """An error (RFC 9457 problem+json)."""

    type: str
    title: str
    status: int
    detail: str


class PolicyView(BaseModel):
    every: str | None
    cron: str | None
    window: str | None
    grace: str
    max_uses: int | None
    jitter: str | None
    blackout: list[str]
    tz: str | None
    max_age: str | None


class VersionView(BaseModel):
    version: int
    stage: str
    created_at: str | None
    staged_at: str | None
    expires_at: str | None


class CredentialView(BaseModel):
    """A credential's metadata and versions (service.views.credential_view); never a value."""

    name: str
    tenant: str
    connector: str
    settings: dict[str, Any]
    tags: dict[str, str]
    policy: PolicyView
    current_version: int | None
    created_at: str | None
    updated_at: str | None
    last_rotated_at: str | None
    next_rotation_at: str | None
    next_rotation_rule: str | None
    use_count: int
    sinks: list[str]
    versions: list[VersionView]


class ValueView(BaseModel):
    name: str
    version: int
    stage: str
    value: str


class UsageView(BaseModel):
    name: str
    use_count: int


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these statuses answer a Problem as problem+json."""
    schema = Problem.model_json_schema()
    return {
        s: {
            "description": "A problem (RFC 9457).",
            "content": {"application/problem+json": {"schema": schema}},
        }
        for s in statuses
    }
