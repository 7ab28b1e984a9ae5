"""Alembic environment: always run with a connection handed in by rotator.store.db."""

from __future__ import annotations

from alembic import context

from rotator.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand
    raise SystemExit("run migrations through `rotator init`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
