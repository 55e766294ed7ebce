"""The run store: every read and write of the service's database, in one place.

Queries that serve a request take the authenticated ``tenant_id`` and filter on it: another
tenant's run, context or usage is simply not found. The few that do not (recovery at start-up, the
scheduler's own bookkeeping, the tenants CLI) say so in their names (``server_*``) or live on the
tenant records themselves.

The same code serves SQLite (the embedded default, through aiosqlite) and PostgreSQL (asyncpg):
portable column types, no dialect-specific SQL, and quota reservations done as compare-and-set
updates on a version column rather than row locks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Sequence

from sqlalchemy import event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from rlm.service.models import AuditEvent, Context, QuotaDay, Run, RunEvent, Tenant, Usage

TERMINAL_MARK = "status"  # the service's own event: the run's status changed


def utc_day(at: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if at is None else at, dt.timezone.utc).strftime("%Y-%m-%d")


def next_utc_midnight(at: float | None = None) -> float:
    now = dt.datetime.fromtimestamp(time.time() if at is None else at, dt.timezone.utc)
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def async_url(url: str) -> str:
    """A database URL with an async driver: ``sqlite://`` -> aiosqlite, ``postgresql://`` -> asyncpg."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}
    if parsed.drivername in driver:
        parsed = parsed.set(drivername=driver[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> AsyncEngine:
    url = async_url(url)
    if url.startswith("sqlite"):
        # One connection: SQLite has one writer anyway, and a single connection can never hit
        # "database is locked" between this process's own transactions. WAL lets readers in other
        # processes (the tenants CLI) run alongside; busy_timeout covers their writes.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=120,
                                     connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class _Conflict(Exception):
    """Another writer changed the quota ledger row first (the transaction is rolled back, retried)."""


class _NotQueued(Exception):
    """The run left the queue before it could start (the transaction is rolled back)."""


class QuotaExhausted(Exception):
    """The tenant's daily quota has nothing left; ``resets_at`` is the next UTC midnight."""

    def __init__(self, what: str, resets_at: float) -> None:
        super().__init__(f"the daily {what} quota is spent; it resets at "
                         f"{dt.datetime.fromtimestamp(resets_at, dt.timezone.utc).isoformat()}")
        self.what = what
        self.resets_at = resets_at


@dataclass(frozen=True)
class ModelSpend:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, event: dict[str, Any]) -> "ModelSpend":
        cost = event.get("cost_usd")
        return ModelSpend(self.calls + 1, self.input_tokens + int(event.get("input_tokens") or 0),
                          self.output_tokens + int(event.get("output_tokens") or 0),
                          self.cost_usd + float(cost or 0.0), self.cost_known and cost is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 8), "cost_known": self.cost_known}


def add_model_call(spend: dict[str, ModelSpend], event: dict[str, Any]) -> None:
    """Account one ``model_call`` event."""
    model = str(event.get("model"))
    spend[model] = spend.get(model, ModelSpend()).add(event)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        await self.engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic, run on this store's connection)."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        def upgrade(connection: Any) -> None:
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(resources.files("rlm.service") / "migrations"))
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    async def ping(self) -> None:
        async with self.sessions() as session:
            await session.execute(select(1))

    # -- tenants (the tenants CLI and authentication) ---------------------------------------------

    async def add_tenant(self, name: str, policy: dict[str, Any], key_id: str, key_hash: str) -> Tenant:
        tenant = Tenant(id=new_id("ten"), name=name, key_id=key_id, key_hash=key_hash, policy=policy,
                        disabled=False, created_at=time.time())
        async with self.sessions.begin() as session:
            session.add(tenant)
        return tenant

    async def tenant_by_name(self, name: str) -> Tenant | None:
        async with self.sessions() as session:
            return (await session.execute(select(Tenant).where(Tenant.name == name))).scalar_one_or_none()

    async def tenant_by_key_id(self, key_id: str) -> Tenant | None:
        async with self.sessions() as session:
            return (await session.execute(select(Tenant).where(Tenant.key_id == key_id))).scalar_one_or_none()

    async def tenants(self) -> list[Tenant]:
        async with self.sessions() as session:
            return list((await session.execute(select(Tenant).order_by(Tenant.name))).scalars())

    async def update_tenant(self, tenant_id: str, **values: Any) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(**values))

    async def audit(self, action: str, *, actor: str, tenant_id: str | None, detail: dict[str, Any]) -> None:
        async with self.sessions.begin() as session:
            session.add(AuditEvent(at=time.time(), tenant_id=tenant_id, actor=actor, action=action, detail=detail))

    async def audit_log(self, tenant_id: str | None = None) -> list[AuditEvent]:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if tenant_id is not None:
            query = query.where(AuditEvent.tenant_id == tenant_id)
        async with self.sessions() as session:
            return list((await session.execute(query)).scalars())

    # -- runs ---------------------------------------------------------------------------------

    async def create_run(self, tenant_id: str, *, root_prompt: str, settings: dict[str, Any], context: Any,
                         context_id: str | None, idempotency_key: str | None) -> tuple[Run, bool]:
        """Insert a queued run; with an idempotency key already used by this tenant, return that run.
        Returns (run, created)."""
        if idempotency_key is not None:
            existing = await self.run_by_idempotency(tenant_id, idempotency_key)
            if existing is not None:
                return existing, False
        run = Run(id=new_id("run"), tenant_id=tenant_id, status="queued", idempotency_key=idempotency_key,
                  root_prompt=root_prompt, settings=settings, context=context, context_id=context_id,
                  created_at=time.time(), reserved_usd=0.0, reserved_tokens=0, settled=False)
        try:
            async with self.sessions.begin() as session:
                session.add(run)
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = await self.run_by_idempotency(tenant_id, idempotency_key)
            if existing is None:
                raise
            return existing, False
        return run, True

    async def run_by_idempotency(self, tenant_id: str, key: str) -> Run | None:
        async with self.sessions() as session:
            return (await session.execute(select(Run).where(Run.tenant_id == tenant_id,
                                                            Run.idempotency_key == key))).scalar_one_or_none()

    async def get_run(self, tenant_id: str, run_id: str) -> Run | None:
        async with self.sessions() as session:
            return (await session.execute(select(Run).where(Run.tenant_id == tenant_id,
                                                            Run.id == run_id))).scalar_one_or_none()

    async def list_runs(self, tenant_id: str, *, status: str | None, before: int | None, limit: int) -> list[Run]:
        """This tenant's runs, newest first; ``before`` is the cursor (a run's ``seq``)."""
        query = select(Run).where(Run.tenant_id == tenant_id)
        if status is not None:
            query = query.where(Run.status == status)
        if before is not None:
            query = query.where(Run.seq < before)
        query = query.order_by(Run.seq.desc()).limit(limit)
        async with self.sessions() as session:
            return list((await session.execute(query)).scalars())

    async def server_runs_with_status(self, statuses: Sequence[str]) -> list[Run]:
        """Every tenant's runs in these states, oldest first: recovery and re-queueing at start-up."""
        async with self.sessions() as session:
            return list((await session.execute(
                select(Run).where(Run.status.in_(statuses)).order_by(Run.seq))).scalars())

    async def server_get_run(self, run_id: str) -> Run | None:
        async with self.sessions() as session:
            return (await session.execute(select(Run).where(Run.id == run_id))).scalar_one_or_none()

    async def server_finish_run(self, run: Run, status: str, result: dict[str, Any],
                                spend: dict[str, ModelSpend], event_seq: int) -> bool:
        """End a run in one transaction: its status and result, its usage, the quota it held, and
        the closing ``status`` event. Returns False when the run had already ended (nothing done)."""
        now = time.time()
        day = run.quota_day or utc_day(now)
        spent_usd = sum(s.cost_usd for s in spend.values())
        spent_tokens = sum(s.tokens for s in spend.values())
        closing = {"event": TERMINAL_MARK, "run_id": run.id, "status": status, "message": result.get("message")}
        async with self.sessions.begin() as session:
            ended = await session.execute(
                update(Run).where(Run.id == run.id, Run.settled.is_(False)).values(
                    status=status, finished_at=now, result=result, settled=True))
            if ended.rowcount != 1:
                return False
            await _charge_quota(session, run.tenant_id, day, -run.reserved_usd, -run.reserved_tokens,
                                spent_usd, spent_tokens)
            for model, item in spend.items():
                await _add_usage(session, run.tenant_id, day, model, item)
            session.add(RunEvent(run_id=run.id, seq=event_seq, tenant_id=run.tenant_id, event=TERMINAL_MARK,
                                 data=json.dumps(closing)))
        return True

    # -- events -------------------------------------------------------------------------------

    async def add_events(self, tenant_id: str, run_id: str, events: Iterable[tuple[int, dict[str, Any]]]) -> None:
        rows = [RunEvent(run_id=run_id, seq=seq, tenant_id=tenant_id, event=str(record.get("event", "")),
                         data=json.dumps(record, ensure_ascii=False, default=str)) for seq, record in events]
        if rows:
            async with self.sessions.begin() as session:
                session.add_all(rows)

    async def events_after(self, tenant_id: str, run_id: str, after: int, limit: int = 500) -> list[RunEvent]:
        async with self.sessions() as session:
            return list((await session.execute(
                select(RunEvent).where(RunEvent.tenant_id == tenant_id, RunEvent.run_id == run_id,
                                       RunEvent.seq > after).order_by(RunEvent.seq).limit(limit))).scalars())

    async def server_last_event_seq(self, run_id: str) -> int:
        async with self.sessions() as session:
            value = (await session.execute(select(func.max(RunEvent.seq)).where(RunEvent.run_id == run_id))).scalar()
            return int(value or 0)

    async def server_spend_from_events(self, run_id: str) -> dict[str, ModelSpend]:
        """What a run spent, from its ``model_call`` events (for runs that ended without a result)."""
        spend: dict[str, ModelSpend] = {}
        async with self.sessions() as session:
            rows = (await session.execute(select(RunEvent.data).where(
                RunEvent.run_id == run_id, RunEvent.event == "model_call"))).scalars()
            for data in rows:
                add_model_call(spend, json.loads(data))
        return spend

    # -- contexts -----------------------------------------------------------------------------

    async def add_context(self, context: Context) -> None:
        async with self.sessions.begin() as session:
            session.add(context)

    async def get_context(self, tenant_id: str, context_id: str) -> Context | None:
        async with self.sessions() as session:
            return (await session.execute(select(Context).where(Context.tenant_id == tenant_id,
                                                                Context.id == context_id))).scalar_one_or_none()

    # -- usage and quota ----------------------------------------------------------------------

    async def usage(self, tenant_id: str, *, since_day: str | None = None) -> list[Usage]:
        query = select(Usage).where(Usage.tenant_id == tenant_id)
        if since_day is not None:
            query = query.where(Usage.day >= since_day)
        async with self.sessions() as session:
            return list((await session.execute(query.order_by(Usage.day, Usage.model))).scalars())

    async def quota_day(self, tenant_id: str, day: str) -> QuotaDay | None:
        async with self.sessions() as session:
            return (await session.execute(select(QuotaDay).where(QuotaDay.tenant_id == tenant_id,
                                                                 QuotaDay.day == day))).scalar_one_or_none()

    async def server_start_run(self, run: Run, day: str, *, want_usd: float | None, want_tokens: int | None,
                               daily_usd: float | None, daily_tokens: int | None) -> tuple[float | None, int | None] | None:
        """queued -> running, holding part of the tenant's daily quota for the run: the smaller of
        what it wants and what the day has left. Returns the run's budget (None: unlimited), None
        when the run is no longer queued (a cancel won the race), or raises QuotaExhausted.

        The hold and the status change are one transaction, and the hold is a compare-and-set on the
        ledger row's version (retried on conflict), so runs starting at once, in this process or in
        another server on the same database, never hold more than the day has.
        """
        for _ in range(100):
            row = await self.quota_day(run.tenant_id, day)
            if row is None:
                try:
                    async with self.sessions.begin() as session:
                        session.add(QuotaDay(tenant_id=run.tenant_id, day=day, reserved_usd=0.0, reserved_tokens=0,
                                             spent_usd=0.0, spent_tokens=0, version=0))
                except IntegrityError:
                    pass
                continue
            usd, hold_usd = want_usd, 0.0
            if daily_usd is not None:
                left = daily_usd - row.spent_usd - max(row.reserved_usd, 0.0)
                if left <= 1e-9:
                    raise QuotaExhausted("dollar", next_utc_midnight())
                usd = hold_usd = left if usd is None else min(usd, left)
            tokens, hold_tokens = want_tokens, 0
            if daily_tokens is not None:
                left_tokens = daily_tokens - row.spent_tokens - max(row.reserved_tokens, 0)
                if left_tokens <= 0:
                    raise QuotaExhausted("token", next_utc_midnight())
                tokens = hold_tokens = left_tokens if tokens is None else min(tokens, left_tokens)
            try:
                async with self.sessions.begin() as session:
                    held = await session.execute(
                        update(QuotaDay).where(QuotaDay.tenant_id == run.tenant_id, QuotaDay.day == day,
                                               QuotaDay.version == row.version).values(
                            reserved_usd=QuotaDay.reserved_usd + hold_usd,
                            reserved_tokens=QuotaDay.reserved_tokens + hold_tokens,
                            version=QuotaDay.version + 1))
                    if held.rowcount != 1:
                        raise _Conflict
                    started = await session.execute(
                        update(Run).where(Run.id == run.id, Run.status == "queued").values(
                            status="running", started_at=time.time(), quota_day=day, reserved_usd=hold_usd,
                            reserved_tokens=hold_tokens))
                    if started.rowcount != 1:
                        raise _NotQueued
            except _Conflict:
                await asyncio.sleep(0)
                continue
            except _NotQueued:
                return None
            run.status, run.quota_day, run.reserved_usd, run.reserved_tokens = "running", day, hold_usd, hold_tokens
            return usd, tokens
        raise RuntimeError("the quota ledger stayed contended for 100 attempts")

    async def quota_left(self, tenant_id: str, *, daily_usd: float | None,
                         daily_tokens: int | None) -> tuple[float | None, int | None]:
        row = await self.quota_day(tenant_id, utc_day())
        spent_usd = (row.spent_usd + max(row.reserved_usd, 0.0)) if row else 0.0
        spent_tokens = (row.spent_tokens + max(row.reserved_tokens, 0)) if row else 0
        return (None if daily_usd is None else daily_usd - spent_usd,
                None if daily_tokens is None else daily_tokens - spent_tokens)


async def _charge_quota(session: AsyncSession, tenant_id: str, day: str, reserved_usd: float, reserved_tokens: int,
                        spent_usd: float, spent_tokens: int) -> None:
    values = dict(reserved_usd=QuotaDay.reserved_usd + reserved_usd,
                  reserved_tokens=QuotaDay.reserved_tokens + reserved_tokens,
                  spent_usd=QuotaDay.spent_usd + spent_usd, spent_tokens=QuotaDay.spent_tokens + spent_tokens,
                  version=QuotaDay.version + 1)
    result = await session.execute(update(QuotaDay).where(QuotaDay.tenant_id == tenant_id, QuotaDay.day == day)
                                   .values(**values))
    if result.rowcount == 0:
        session.add(QuotaDay(tenant_id=tenant_id, day=day, reserved_usd=max(reserved_usd, 0.0),
                             reserved_tokens=max(reserved_tokens, 0), spent_usd=spent_usd,
                             spent_tokens=spent_tokens, version=0))


async def _add_usage(session: AsyncSession, tenant_id: str, day: str, model: str, item: ModelSpend) -> None:
    result = await session.execute(
        update(Usage).where(Usage.tenant_id == tenant_id, Usage.day == day, Usage.model == model).values(
            calls=Usage.calls + item.calls, input_tokens=Usage.input_tokens + item.input_tokens,
            output_tokens=Usage.output_tokens + item.output_tokens, cost_usd=Usage.cost_usd + item.cost_usd))
    if result.rowcount == 0:
        session.add(Usage(tenant_id=tenant_id, day=day, model=model, calls=item.calls,
                          input_tokens=item.input_tokens, output_tokens=item.output_tokens, cost_usd=item.cost_usd))
