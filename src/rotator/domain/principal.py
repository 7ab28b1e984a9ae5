"""Who calls a use case, and what each role may do. Pure: no I/O.

A principal acts in exactly one tenant and holds grants: a role and a name glob (``scope``)
within that tenant. The store's owner (local use without a token, and rotator's own engine)
holds every permission in every tenant. Deny by default: an action not in the role's set, a
name outside every grant's scope, or another tenant is refused.

Scopes are globs matched with :func:`fnmatch.fnmatchcase` against the credential name: ``*``
matches any run of characters including ``/`` (``prod/payments/*`` covers
``prod/payments/db`` and ``prod/payments/eu/db``), ``?`` one character, ``[...]`` a set.
An action on the tenant as a whole (no credential name: audit, reports, tenant-wide policy
defaults, principals) needs a grant whose scope is ``*``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fnmatch import fnmatchcase

from rotator.domain.model import DEFAULT_TENANT


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything in its tenant, principals and tokens included
    OPERATOR = "operator"  # manage and rotate credentials, read metadata; no values
    AUDITOR = "auditor"  # metadata, audit and reports; never values
    READER = "reader"  # values (and metadata) of the credentials its grant matches
    APP = "app"  # values of its own credentials, usage reports


class Action(enum.StrEnum):
    """What a use case does, as far as permissions go. One per kind of effect."""

    CREDENTIAL_READ = "credential.read"  # list, show: metadata, never a value
    CREDENTIAL_WRITE = "credential.write"  # add, update, remove
    VALUE_READ = "value.read"  # get a value
    USAGE_REPORT = "usage.report"  # credential used
    ROTATE = "rotate"  # rotate (also emergency, groups, rollouts), plan, revoke
    ROTATION_READ = "rotation.read"  # rotations, rollouts, risk events: status and lists
    GROUP_WRITE = "group.write"  # add, remove groups
    POLICY_READ = "policy.read"  # list policy defaults
    POLICY_WRITE = "policy.write"  # set, remove policy defaults
    EVENT_REPORT = "event.report"  # report a risk event
    AUDIT_READ = "audit.read"  # list, head, verify, export the audit log
    AUDIT_WRITE = "audit.write"  # make a signed checkpoint
    AUDIT_FORWARD = "audit.forward"  # manage SIEM forwarding
    WEBHOOK_READ = "webhook.read"  # list webhooks and their dead letters
    WEBHOOK_WRITE = "webhook.write"  # add, remove webhooks; retry dead letters; run them
    REPORT_READ = "report.read"  # compliance reports and evidence records
    PRINCIPAL_READ = "principal.read"  # list principals and tokens
    PRINCIPAL_WRITE = "principal.write"  # add, remove principals; create, revoke tokens
    STORE_ADMIN = "store.admin"  # tenants, master key, workers, recovery: the owner only


_READ_META = {Action.CREDENTIAL_READ}
ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(a for a in Action if a is not Action.STORE_ADMIN),
    Role.OPERATOR: frozenset(
        {
            *_READ_META,
            Action.CREDENTIAL_WRITE,
            Action.USAGE_REPORT,
            Action.ROTATE,
            Action.ROTATION_READ,
            Action.GROUP_WRITE,
            Action.POLICY_READ,
            Action.POLICY_WRITE,
            Action.EVENT_REPORT,
        }
    ),
    Role.AUDITOR: frozenset(
        {
            *_READ_META,
            Action.ROTATION_READ,
            Action.POLICY_READ,
            Action.AUDIT_READ,
            Action.AUDIT_WRITE,
            Action.REPORT_READ,
        }
    ),
    Role.READER: frozenset({*_READ_META, Action.VALUE_READ}),
    Role.APP: frozenset({*_READ_META, Action.VALUE_READ, Action.USAGE_REPORT}),
}
"""What each role may do (within its tenant and its grant's scope). The permission-matrix
test restates this table independently; change both together."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A role over the credentials of the principal's tenant whose names match ``scope``."""

    role: Role
    scope: str = "*"

    def covers(self, name: str | None) -> bool:
        """Whether the grant reaches ``name`` (None: the tenant as a whole)."""
        if name is None:
            return self.scope == "*"
        return fnmatchcase(name, self.scope)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: a name, the tenant it acts in and its grants. ``owner`` is the store's
    owner (local use without ``ROTATOR_TOKEN``; the engine acting for a rotation): every
    permission in every tenant. ``token_id`` names the token it authenticated with."""

    name: str = "local"
    tenant: str = DEFAULT_TENANT
    grants: tuple[Grant, ...] = ()
    owner: bool = False
    token_id: str | None = None

    def may(self, action: Action, name: str | None = None, tenant: str | None = None) -> bool:
        """Whether the principal may do ``action`` on credential ``name`` (None: on the
        tenant as a whole) in ``tenant`` (None: its own). Deny by default."""
        if self.owner:
            return True
        if tenant is not None and tenant != self.tenant:
            return False
        if action is Action.STORE_ADMIN:
            return False
        return any(action in ROLE_ACTIONS[g.role] and g.covers(name) for g in self.grants)

    def may_some(self, action: Action) -> bool:
        """Whether some grant gives ``action`` at all, whatever its scope: a listing is
        allowed then and shows only the names :meth:`may` reaches. Deny by default."""
        if self.owner:
            return True
        if action is Action.STORE_ADMIN:
            return False
        return any(action in ROLE_ACTIONS[g.role] for g in self.grants)

    def with_tenant(self, tenant: str) -> Principal:
        """The owner acting in another tenant. A non-owner keeps its own (use :meth:`may`)."""
        if not self.owner:
            return self
        return Principal(self.name, tenant, self.grants, True, self.token_id)


LOCAL_PRINCIPAL = Principal(owner=True)
"""Local use without a token: the store's owner, in the default tenant."""
