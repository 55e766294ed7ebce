"""The service's tables (SQLAlchemy 2 ORM). Portable types only, so SQLite and PostgreSQL share them.

Times are UTC epoch seconds (floats) and days ``YYYY-MM-DD`` strings: the same on every database.
Every row that belongs to a tenant carries ``tenant_id``, and every query in ``store`` filters on it.
The schema itself is created by the Alembic migrations in ``migrations/``, never by ``create_all``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE_STATUSES = ("queued", "running")
# "interrupted": the server stopped (crash or shutdown) while the run was running.
# "rejected": accepted, but the tenant's daily quota was spent by the time it could start.
SERVICE_STATUSES = ("cancelled", "interrupted", "rejected")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The key is ``rlm_<key_id>_<secret>``; only its SHA-256 is kept.
    key_id: Mapped[str] = mapped_column(String(40), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_runs_tenant_idempotency"),
        Index("ix_runs_tenant_seq", "tenant_id", "seq"),
        Index("ix_runs_status", "status"),
    )

    # Arrival order: the queue's order and the list's cursor.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[str] = mapped_column(String(20))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    root_prompt: Mapped[str] = mapped_column(Text)
    # The run's settings once the policy is applied (policy.RunSettings).
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    # An inline context (str, list or dict), or the id of an uploaded one.
    context: Mapped[Any] = mapped_column(JSON, nullable=True)
    context_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # response, message, iterations, usage per model, cost_usd, tokens.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # What the run holds of its tenant's daily quota while it runs (released when it settles).
    quota_day: Mapped[str | None] = mapped_column(String(10), nullable=True)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_tokens: Mapped[int] = mapped_column(Integer, default=0)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)


class RunEvent(Base):
    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    event: Mapped[str] = mapped_column(String(40))
    data: Mapped[str] = mapped_column(Text)  # the event as JSON, exactly as it is streamed


class Context(Base):
    __tablename__ = "contexts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # "text" or "json"
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class Usage(Base):
    """Calls, tokens and dollars of one tenant, one UTC day, one model."""

    __tablename__ = "usage"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class QuotaDay(Base):
    """One tenant's daily quota ledger: what running runs hold, and what settled runs spent."""

    __tablename__ = "quota_days"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_tokens: Mapped[int] = mapped_column(Integer, default=0)
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    spent_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped on every change: reservations are compare-and-set on it (portable, no row locks).
    version: Mapped[int] = mapped_column(Integer, default=0)


class AuditEvent(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    tenant_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
