"""The life of a run: accepted (stored, queued), started by the fair scheduler, executed, ended.

Every transition is written to the store before it is acted on, so a server killed at any moment
restarts into a consistent state: ``recover`` marks the runs it finds running as ``interrupted``
(their events kept, their quota settled, their boxes reaped) and queues the queued ones again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog

from rlm.service.config import Config
from rlm.service.metrics import Metrics
from rlm.service.models import Run, Tenant
from rlm.service.policy import Policy, RunSettings
from rlm.service.runner import (EventRecorder, build_rlm, load_context, reap_run_boxes, run_limits,
                                MAX_CONCURRENT_CHILDREN)
from rlm.service.scheduler import FairScheduler, Job
from rlm.service.sse import EventHub
from rlm.service.store import ModelSpend, QuotaExhausted, Store, next_utc_midnight, utc_day

log = structlog.get_logger("rlm.service")


class QueueFull(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Stop:
    """Why a running run's task was cancelled: the status and message it ends with."""

    status: str
    message: str


class RunManager:
    def __init__(self, store: Store, config: Config, metrics: Metrics) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.hub = EventHub()
        server = config.server
        self.scheduler = FairScheduler(max_running=server.max_concurrent_runs, max_boxes=server.max_boxes,
                                       start=self._start)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, _Stop] = {}
        self._tenant_names: dict[str, str] = {}
        self._submit_locks: dict[str, asyncio.Lock] = {}
        self.stopping = False

    # -- tenants --------------------------------------------------------------------------------

    def tenant_seen(self, tenant: Tenant) -> Policy:
        """Note a tenant's current policy (from an authenticated request or the tenant watcher)."""
        policy = Policy.from_dict(tenant.policy)
        self._tenant_names[tenant.id] = tenant.name
        self.scheduler.set_tenant_limit(tenant.id, policy.max_concurrent_runs)
        return policy

    async def watch_tenants(self) -> None:
        """Apply what `rlm tenants` (another process) changed: limits, and disabled tenants, whose
        queued and running runs are cancelled at once."""
        while True:
            try:
                for tenant in await self.store.tenants():
                    self.tenant_seen(tenant)
                    if tenant.disabled:
                        await self.cancel_all(tenant.id, "the tenant was disabled")
            except Exception:
                log.exception("tenant_watch_failed")
            await asyncio.sleep(self.config.server.tenant_poll_s)

    def _update_queue_metrics(self, tenant_id: str) -> None:
        name = self._tenant_names.get(tenant_id, tenant_id)
        self.metrics.queue_depth.labels(name).set(self.scheduler.queued(tenant_id))
        self.metrics.running.labels(name).set(self.scheduler.running(tenant_id))

    # -- accepting ------------------------------------------------------------------------------

    async def submit(self, tenant: Tenant, policy: Policy, *, root_prompt: str, settings: RunSettings,
                     context: Any, context_id: str | None, idempotency_key: str | None) -> tuple[Run, bool]:
        """Store and queue a run. Raises QueueFull or QuotaExhausted (nothing stored then)."""
        if self.stopping:
            raise QueueFull("the server is shutting down", self.config.server.retry_after_s)
        lock = self._submit_locks.setdefault(tenant.id, asyncio.Lock())
        async with lock:  # the queue-length check and the insert are one step per tenant
            if idempotency_key is not None:  # a retried POST gets its run, whatever the queue holds now
                existing = await self.store.run_by_idempotency(tenant.id, idempotency_key)
                if existing is not None:
                    return existing, False
            self._check_room(tenant.id, policy)
            usd_left, tokens_left = await self.store.quota_left(tenant.id, daily_usd=policy.daily_usd,
                                                                daily_tokens=policy.daily_tokens)
            if usd_left is not None and usd_left <= 1e-9:
                raise QuotaExhausted("dollar", next_utc_midnight())
            if tokens_left is not None and tokens_left <= 0:
                raise QuotaExhausted("token", next_utc_midnight())
            run, created = await self.store.create_run(
                tenant.id, root_prompt=root_prompt, settings=settings.to_dict(), context=context,
                context_id=context_id, idempotency_key=idempotency_key)
            if created:
                self._enqueue(run, settings)
                log.info("run_accepted", tenant_id=tenant.id, run_id=run.id)
        return run, created

    def _check_room(self, tenant_id: str, policy: Policy) -> None:
        server = self.config.server
        if self.scheduler.queued(tenant_id) >= policy.max_queued_runs:
            raise QueueFull(f"this tenant already has {self.scheduler.queued(tenant_id)} queued runs "
                            f"(policy max_queued_runs={policy.max_queued_runs})", server.retry_after_s)
        if self.scheduler.queued() >= server.max_queued_runs:
            raise QueueFull("the server's queue is full", server.retry_after_s)

    def _enqueue(self, run: Run, settings: RunSettings) -> None:
        self.scheduler.enqueue(Job(run.id, run.tenant_id, settings.box_slots(MAX_CONCURRENT_CHILDREN)))
        self._update_queue_metrics(run.tenant_id)

    # -- recovery -------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: runs left running by a dead server are interrupted; queued runs queue again."""
        for run in await self.store.server_runs_with_status(["running"]):
            environments = {RunSettings.from_dict(run.settings).backend}
            reaped = await asyncio.to_thread(reap_run_boxes, run.id, environments)
            spend = await self.store.server_spend_from_events(run.id)
            seq = await self.store.server_last_event_seq(run.id)
            await self._finish(run, "interrupted", {"message": "the server stopped while the run was running"},
                               spend, seq + 1)
            log.warning("run_interrupted", tenant_id=run.tenant_id, run_id=run.id, boxes_reaped=reaped)
        queued = await self.store.server_runs_with_status(["queued"])
        for tenant in await self.store.tenants():
            self.tenant_seen(tenant)
        for run in queued:
            self._enqueue(run, RunSettings.from_dict(run.settings))
        if queued:
            log.info("runs_requeued", count=len(queued))

    # -- executing ------------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._execute(job), name=f"run-{job.run_id}")
        self._tasks[job.run_id] = task

    async def _execute(self, job: Job) -> None:
        # RLM binds its own run id as run_id; the service run id travels as service_run_id.
        structlog.contextvars.bind_contextvars(tenant_id=job.tenant_id, service_run_id=job.run_id)
        try:
            await self._execute_started(job)
        except asyncio.CancelledError:
            # Cancelled before the run's own handler could record it (while starting it).
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            run = await asyncio.shield(self.store.server_get_run(job.run_id))
            if run is not None and run.status in ("queued", "running"):
                stop = self._stops.get(job.run_id) or _Stop("interrupted", "the server stopped the run")
                await self._finish(run, stop.status, {"message": stop.message}, {},
                                   await self.store.server_last_event_seq(run.id) + 1)
        except Exception:
            log.exception("run_failed_in_service")
        finally:
            self._tasks.pop(job.run_id, None)
            self._stops.pop(job.run_id, None)
            self.scheduler.finished(job.run_id)
            self._update_queue_metrics(job.tenant_id)

    async def _execute_started(self, job: Job) -> None:
        run = await self.store.server_get_run(job.run_id)
        if run is None or run.status != "queued":
            return
        tenant = next((t for t in await self.store.tenants() if t.id == run.tenant_id), None)
        if tenant is None or tenant.disabled:
            await self._finish(run, "cancelled", {"message": "the tenant was disabled"}, {}, 1)
            return
        policy = Policy.from_dict(tenant.policy)
        settings = RunSettings.from_dict(run.settings)
        try:
            budget = await self.store.server_start_run(
                run, utc_day(), want_usd=settings.max_cost_usd, want_tokens=settings.max_tokens,
                daily_usd=policy.daily_usd, daily_tokens=policy.daily_tokens)
        except QuotaExhausted as exc:
            await self._finish(run, "rejected", {"message": str(exc)}, {}, 1)
            return
        if budget is None:
            return  # cancelled while queued; the cancel recorded it
        budget_usd, budget_tokens = budget
        self._update_queue_metrics(run.tenant_id)
        recorder = EventRecorder(self.store, self.metrics, self.hub, tenant_id=tenant.id, tenant_name=tenant.name,
                                 run_id=run.id, last_seq=0)
        recorder.service_event("status", status="running", budget_usd=budget_usd, budget_tokens=budget_tokens)
        status, result = "error", {"message": "the run did not finish"}
        try:
            context_path = kind = None
            if run.context_id is not None:
                ctx = await self.store.get_context(tenant.id, run.context_id)
                if ctx is None:
                    raise LookupError(f"context {run.context_id} no longer exists")
                context_path, kind = ctx.path, ctx.kind
            context = await load_context(run.context, context_path, kind)
            limits = run_limits(self.config, settings, max_tokens=budget_tokens, max_cost_usd=budget_usd)
            rlm = build_rlm(self.config, settings, run_id=run.id, tenant_id=tenant.id, limits=limits,
                            on_event=recorder)
            outcome = await rlm.acompletion(context, run.root_prompt)
            status = outcome.status
            result = {"response": outcome.response, "message": outcome.message, "iterations": outcome.iterations,
                      "execution_time": round(outcome.execution_time, 4), "rlm_run_id": outcome.run_id}
        except asyncio.CancelledError:
            # The run's end is recorded below; the task itself ends normally.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            stop = self._stops.get(run.id) or _Stop("interrupted", "the server stopped the run")
            status, result = stop.status, {"message": stop.message}
        except Exception as exc:
            log.exception("run_error")
            status, result = "error", {"message": f"{exc.__class__.__name__}: {exc}"}
        last = await recorder.close()
        await self._finish(run, status, result, recorder.spend, last + 1)

    async def _finish(self, run: Run, status: str, result: dict[str, Any], spend: dict[str, ModelSpend],
                      event_seq: int) -> None:
        result = dict(result)
        result["usage"] = {model: item.to_dict() for model, item in spend.items()}
        result["cost_usd"] = round(sum(s.cost_usd for s in spend.values()), 8)
        result["tokens"] = sum(s.tokens for s in spend.values())
        if await asyncio.shield(self.store.server_finish_run(run, status, result, spend, event_seq)):
            self.metrics.runs.labels(self._tenant_names.get(run.tenant_id, run.tenant_id), status).inc()
            log.info("run_end", tenant_id=run.tenant_id, run_id=run.id, status=status)
        self.hub.notify(run.id)

    # -- cancelling -----------------------------------------------------------------------------

    async def cancel(self, run: Run, message: str, *, status: str = "cancelled", wait_s: float = 30.0) -> None:
        """Stop a run: a queued one leaves the queue, a running one is cancelled (its model calls
        stop, its boxes are destroyed) and waited for up to ``wait_s``."""
        if self.scheduler.remove(run.id):
            await self._finish(run, status, {"message": message}, {}, await self.store.server_last_event_seq(run.id) + 1)
            self._update_queue_metrics(run.tenant_id)
            return
        task = self._tasks.get(run.id)
        if task is None:
            return
        self._stops.setdefault(run.id, _Stop(status, message))
        task.cancel()
        await asyncio.wait({task}, timeout=wait_s)

    async def cancel_all(self, tenant_id: str, message: str) -> None:
        for run_id in self.scheduler.queued_runs(tenant_id) + self.scheduler.running_runs(tenant_id):
            run = await self.store.server_get_run(run_id)
            if run is not None:
                await self.cancel(run, message, wait_s=0)

    # -- stopping -------------------------------------------------------------------------------

    async def shutdown(self, grace_s: float) -> None:
        """Stop starting runs; give running ones ``grace_s`` to finish, then interrupt them (their
        boxes are destroyed). Queued runs stay queued in the store for the next start."""
        self.stopping = True
        self.scheduler.paused = True
        tasks = list(self._tasks.values())
        if tasks:
            log.info("shutdown_waiting", running=len(tasks), grace_s=grace_s)
            await asyncio.wait(tasks, timeout=grace_s)
        for run_id, task in list(self._tasks.items()):
            self._stops.setdefault(run_id, _Stop("interrupted", "the server shut down while the run was running"))
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=60)
