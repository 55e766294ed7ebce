"""Alembic environment: migrations run on the connection the service hands over (see store.migrate)."""

from __future__ import annotations

from alembic import context

from rlm.service.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the service's migrations run through rlm.service.store.migrate(), which passes a connection")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
