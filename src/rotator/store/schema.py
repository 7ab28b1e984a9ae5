"""The tables, as SQLAlchemy Core metadata. One schema for SQLite and PostgreSQL.

Alembic migrations in ``migrations/`` create exactly this; a test checks they agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

data_keys = Table(
    "data_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("master_key_id", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

credentials = Table(
    "credentials",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("connector", String(64), nullable=False),
    Column("config", JSON, nullable=False),
    Column("policy", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("next_rotation_at", UTCDateTime, nullable=True),
    Column("last_rotated_at", UTCDateTime, nullable=True),
    Column("use_count", BigInteger, nullable=False, default=0),
    Column("sinks", JSON, nullable=False, server_default="[]"),  # migration 0004
    # "<data key id>:<HMAC hex>" over the stage map (migration 0006, see kernel.integrity).
    Column("stage_mac", String(96), nullable=True),
    # Migration 0007: the policy fields the credential sets itself (a partial policy; NULL on
    # rows from before: all of ``policy``), while ``policy`` holds the effective policy merged
    # with tag and tenant defaults; and the rule that set next_rotation_at.
    Column("policy_own", JSON, nullable=True),
    Column("next_rotation_rule", String(300), nullable=True),
    UniqueConstraint("tenant_id", "name", name="uq_credentials_tenant_name"),
    Index("ix_credentials_next_rotation_at", "next_rotation_at"),
)

credential_tags = Table(
    "credential_tags",
    metadata,
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("key", String(64), primary_key=True),
    Column("value", String(1024), nullable=False),
    Index("ix_credential_tags_key_value", "key", "value"),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), nullable=False
    ),
    Column("number", Integer, nullable=False),
    Column("stage", String(16), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("data_key_id", Integer, ForeignKey("data_keys.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("staged_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    UniqueConstraint("credential_id", "number", name="uq_versions_credential_number"),
    Index("ix_versions_credential_stage", "credential_id", "stage"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", String(40), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("credential", String(200), nullable=True),
    Column("rotation_id", String(64), nullable=True),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # The audit key (fingerprint) this entry is MAC'd with; NULL only on a store not yet
    # through the keyed upgrade of migration 0006.
    Column("key_id", String(32), nullable=True),
    Index("ix_audit_log_credential", "credential"),
)

# One row (id=1): the last seq and hash. Appends lock it, which serializes the chain across
# processes, and it lets `audit verify` notice a truncated tail.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    # Migration 0006: the audit key in use and a MAC over (seq, hash, key_id) under it, so a
    # head copied from an older entry (a truncated tail) does not verify.
    Column("key_id", String(32), nullable=True),
    Column("mac", String(64), nullable=True),
)

# Earlier audit keys (migration 0006), wrapped under the current master key so entries they
# MAC'd stay verifiable after master-key rotations; re-wrapped by every master-key rotation.
audit_keys = Table(
    "audit_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("master_key_id", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# -- rotations (migration 0002) -----------------------------------------------------------

# One row per rotation: the durable intent and progress. ``step`` is the last step that
# completed: created (PENDING version stored) -> set -> tested -> finished; or rolled_back /
# failed. A row whose step is not terminal and whose lease has run out is resumed by recovery.
rotations = Table(
    "rotations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), nullable=False
    ),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("credential", String(200), nullable=False),
    Column("batch_id", String(36), nullable=True),
    Column("trigger", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("version", Integer, nullable=True),
    Column("step", String(16), nullable=False),
    Column("grace_s", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("owner", String(200), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    # The owner's token (migration 0005): new on every claim and takeover; every write of the
    # row's state is conditioned on it, so a stalled former owner cannot write.
    Column("fence", String(64), nullable=True),
    Index("ix_rotations_step_lease", "step", "lease_expires_at"),
    Index("ix_rotations_credential", "credential_id"),
    Index("ix_rotations_batch", "batch_id"),
)

# The per-credential lock: at most one row per credential, naming the rotation that holds it.
credential_locks = Table(
    "credential_locks",
    metadata,
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("rotation_id", String(36), nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
)

# Versions whose grace ends at ``due_at``: revoked on the target then marked RETIRED.
revocations = Table(
    "revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), nullable=False
    ),
    Column("version", Integer, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("credential_id", "version", name="uq_revocations_credential_version"),
    Index("ix_revocations_due_at", "due_at"),
)

# -- coordinated groups (migration 0003) ------------------------------------------------------

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("all_or_nothing", Integer, nullable=False),
    Column("min_offset_ms", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_groups_tenant_name"),
)

# One row per member; ``after`` lists the members (by credential name) that rotate before it.
group_members = Table(
    "group_members",
    metadata,
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("position", Integer, nullable=False),
    Column("after", JSON, nullable=False),
)

# -- policy defaults (migration 0007) -------------------------------------------------------

# A partial policy (only the fields it sets) per tenant and scope: a tag pair, or the tenant
# itself (tag_key and tag_value empty).
policy_defaults = Table(
    "policy_defaults",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("tag_key", String(64), nullable=False),
    Column("tag_value", String(1024), nullable=False),
    Column("policy", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("tenant_id", "tag_key", "tag_value", name="uq_policy_defaults_scope"),
)

# -- scheduler claims (migration 0008) ------------------------------------------------------

# A credential claimed by a worker for a scheduled rotation. Claiming moves the credential's
# next_rotation_at to ``lease_until`` (so no other worker finds it due) and records the claim
# here; the claimer's heartbeat moves both on together, and only while next_rotation_at still
# equals ``lease_until`` (a finished rotation has set its next time: the claim is over). A
# worker that dies stops extending: at ``lease_until`` the credential is due again.
credential_claims = Table(
    "credential_claims",
    metadata,
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("worker", String(200), nullable=False),
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=False),
    Index("ix_credential_claims_worker", "worker"),
)

# -- risk events (migration 0009) -----------------------------------------------------------

# One row per reported risk event. ``selector`` is {"credential": NAME} or {"tags": {K: V}};
# ``detail`` is the reporter's text, at most 1,000 characters (checked by the service).
risk_events = Table(
    "risk_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("selector", JSON, nullable=False),
    Column("detail", Text, nullable=True),
    Column("reporter", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_risk_events_tenant_created", "tenant_id", "created_at"),
)

# One row per credential an event matched: the decision (notify, rotate, emergency), its
# reason, and the outcome of the rotation it started. ``kind`` repeats the event's so the
# de-duplication and cooldown look-ups read one indexed table.
risk_decisions = Table(
    "risk_decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Integer, ForeignKey("risk_events.id", ondelete="CASCADE"), nullable=False),
    Column(
        "credential_id", Integer, ForeignKey("credentials.id", ondelete="CASCADE"), nullable=False
    ),
    Column("credential", String(200), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("duplicate_of", Integer, nullable=True),
    # rotated | failed | rolled_back; None: no rotation (notify)
    Column("outcome", String(16), nullable=True),
    Column("rotation_id", String(36), nullable=True),
    Column("version", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_risk_decisions_credential_created", "credential_id", "created_at"),
    Index("ix_risk_decisions_event", "event_id"),
)

# -- staggered rollouts (migration 0010) ------------------------------------------------------

# One row per rollout: a selection resolved once into items, started over a window under a
# rate cap. ``status``: running, halted (``halt_reason`` says why), done, aborted.
# ``finished_count`` numbers the items as they finish; the halt rule looks at the last
# ``halt_window`` items numbered above ``window_floor`` (set by resume, so the failures that
# halted a rollout do not halt it again at once).
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("selector", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("stagger_s", Integer, nullable=False),
    Column("max_per_minute", Float, nullable=False),
    Column("halt_pct", Integer, nullable=False),
    Column("halt_window", Integer, nullable=False),
    Column("halt_reason", Text, nullable=True),
    Column("finished_count", Integer, nullable=False),
    Column("window_floor", Integer, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_rollouts_status", "status"),
)

# One row per credential of a rollout. ``status``: pending, running, rotated, failed, skipped.
# A claimed item holds ``claimed_by`` and a lease; its rotation carries the rollout's id as
# ``batch_id``, so an item whose claimer died is settled from that rotation's row.
rollout_items = Table(
    "rollout_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(36), ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("credential", String(200), nullable=False),
    Column("planned_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("finish_no", Integer, nullable=True),
    Column("rotation_id", String(36), nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("rollout_id", "credential", name="uq_rollout_items_rollout_credential"),
    Index("ix_rollout_items_status_planned", "status", "planned_at"),
    Index("ix_rollout_items_rollout_status", "rollout_id", "status"),
)

# -- principals and API tokens (migration 0011) -----------------------------------------------

# Who may call: a person or a service of one tenant, holding grants (a role over a name glob).
principals = Table(
    "principals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("kind", String(16), nullable=False),  # person | service
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_principals_tenant_name"),
)

grants = Table(
    "grants",
    metadata,
    Column(
        "principal_id", Integer, ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("role", String(16), primary_key=True),
    Column("scope", String(200), primary_key=True),
)

# API tokens: only the SHA-256 (hex) of the token's secret is kept, never the token.
tokens = Table(
    "tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column(
        "principal_id",
        Integer,
        ForeignKey("principals.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("digest", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
)

# -- signed audit checkpoints (migration 0012) -------------------------------------------------

# The public half of every Ed25519 key that signed a checkpoint, recorded the first time it
# signs (the private key is derived from an audit key, never stored). A record only: rotator
# never trusts it (it derives the keys it trusts from the audit keys it holds). ``id``: first
# 16 hex of SHA-256(public_key).
audit_signing_keys = Table(
    "audit_signing_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),  # raw 32 bytes
    Column("created_at", UTCDateTime, nullable=False),
)

# One signed checkpoint per row: the running digest of entries 1..seq, the MAC of entry seq,
# the signing key and the Ed25519 signature (hex) over them (see rotator.audit.checkpoints).
# ``created_at`` is the signed timestamp text (same format as audit_log.ts), kept verbatim.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("digest", String(64), nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("created_by", String(200), nullable=False),
    # migration 0014: the previous checkpoint's seq and digest, signed (body v2); NULL only in
    # rows written before it, which do not verify.
    Column("prev_seq", BigInteger, nullable=True),
    Column("prev_digest", String(64), nullable=True),
)

# Evidence records read a rotation's audit entries by its id.
Index("ix_audit_log_rotation_id", audit_log.c.rotation_id)
# The compliance report reads a tenant's entries of one action from a time on (reads,
# denials) and a tenant's rotations (store/reports.py): without these it scans everything.
Index("ix_audit_log_tenant_action_ts", audit_log.c.tenant, audit_log.c.action, audit_log.c.ts)
Index("ix_rotations_tenant_created", rotations.c.tenant_id, rotations.c.created_at)

# -- SIEM forwarding (migration 0013) ---------------------------------------------------------

# One row per forwarder: where audit entries go (``kind`` webhook or syslog, ``target`` a URL)
# and how far it got. ``cursor`` is the last seq the target acknowledged; it only moves
# forward, in a transaction conditioned on the old cursor and on ``claimed_by`` (the process
# holding the lease, ``lease_until``). ``tenant_id`` NULL: every entry (the owner's); else only
# that tenant's. ``options`` holds no secret (the webhook's HMAC key is a credential, by name).
audit_forwarders = Table(
    "audit_forwarders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    # The name's namespace: the tenant's name, or "*" for the owner's every-tenant
    # forwarders (tenant_id NULL). Names are unique per namespace, so one tenant
    # cannot learn another's forwarder names from a name clash.
    Column("scope_key", String(200), nullable=False),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("target", Text, nullable=False),
    Column("options", JSON, nullable=False),
    Column("cursor", BigInteger, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_attempt_at", UTCDateTime, nullable=True),
    Column("delivered", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("scope_key", "name", name="uq_audit_forwarders_scope_name"),
)

# -- rotation jobs of the REST API (migration 0015) -------------------------------------------

# One row per rotation requested through the API (``POST /v1/credentials/{name}/rotate``,
# ``POST /v1/rotations``): the process that accepted it (``owner``, an engine owner id) runs it
# and renews ``lease_until`` while it does; ``status`` running, done (``result`` holds the
# ``rotate --json`` shape) or interrupted (the owner died or failed: ``error`` says which).
# ``credentials``: the names the selection resolved to when the job was accepted (what the job
# reaches, for access checks). ``id`` is time-ordered (UUIDv7 layout), so pages by id are in
# the order jobs were accepted.
rotation_jobs = Table(
    "rotation_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("requested_by", String(200), nullable=False),
    Column("selector", JSON, nullable=False),
    Column("credentials", JSON, nullable=False),
    Column("emergency", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("owner", String(200), nullable=False),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_rotation_jobs_tenant_id", "tenant_id", "id"),
)

# -- webhook notifications (migration 0016) -------------------------------------------------

# One row per webhook: events (types, see rotator.policy.notify) derived from the audit log,
# read after ``cursor`` like a SIEM forwarder (lease ``claimed_by``/``lease_until``; the cursor
# moves forward only, conditioned on the old cursor and on the lease). ``tenant_id`` NULL: every
# tenant's entries (the owner's). The signing key is a credential (``secret_credential`` in
# ``secret_tenant``), by name: the row holds no secret.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=True),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("format", String(16), nullable=False),
    Column("secret_credential", String(200), nullable=False),
    Column("secret_tenant", String(64), nullable=False),
    Column("cursor", BigInteger, nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_attempt_at", UTCDateTime, nullable=True),
    Column("delivered", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Events a webhook gave up on (after its attempts): kept with the exact body for
# ``webhook retry``. ``redelivered_at`` set once a retry was acknowledged (never sent again).
webhook_dead_letters = Table(
    "webhook_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("webhook_id", Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("delivery_id", String(200), nullable=False),
    Column("event", JSON, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("redelivered_at", UTCDateTime, nullable=True),
    UniqueConstraint("webhook_id", "seq", "event_type", name="uq_webhook_dead_letters_event"),
)

# One row per credential and due period (``period``: the start of the CURRENT version's life,
# ISO text) for which a ``credential.overdue`` audit entry was appended, in the same
# transaction: the primary key makes that entry exactly once, whatever number of processes.
credential_overdue_marks = Table(
    "credential_overdue_marks",
    metadata,
    Column(
        "credential_id",
        Integer,
        ForeignKey("credentials.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("period", String(40), primary_key=True),
    Column("marked_at", UTCDateTime, nullable=False),
)
