"""Executing one run: an ``RLM`` built from the server's configuration and the run's settings, its
events stored as they happen, its spend accounted from its ``model_call`` events.

The service is a user of the public API like any other: ``RLM(on_event=...)`` and ``acompletion``.
Cancelling the task running ``acompletion`` stops the run's model calls and destroys its boxes.
Every box a run opens carries the run id (an environment marker for local boxes, a label for Docker
ones), so boxes left by a server killed mid-run are found and removed when it starts again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import structlog

from rlm import RLM, Limits
from rlm.service.config import Config
from rlm.service.metrics import Metrics
from rlm.service.policy import RunSettings
from rlm.service.sse import EventHub
from rlm.service.store import ModelSpend, Store, add_model_call

log = structlog.get_logger("rlm.service")

# Environment variable set in every local box of a run (its value: the run id).
RUN_MARKER_ENV = "RLM_SERVICE_RUN"
# Child RLMs of one run open at once per depth (what the scheduler counts as the run's boxes).
MAX_CONCURRENT_CHILDREN = 2


def rlm_supports_custom_tools() -> bool:
    return "custom_tools" in inspect.signature(RLM).parameters


class EventRecorder:
    """``on_event`` for one run: numbers each event, accounts it, and writes it to the store in
    order (a writer task drains a queue, so the run's loop never waits on the database)."""

    def __init__(self, store: Store, metrics: Metrics, hub: EventHub, *, tenant_id: str, tenant_name: str,
                 run_id: str, last_seq: int) -> None:
        self.store, self.metrics, self.hub = store, metrics, hub
        self.tenant_id, self.tenant_name, self.run_id = tenant_id, tenant_name, run_id
        self.seq = last_seq
        self.spend: dict[str, ModelSpend] = {}
        self._open_boxes: set[str] = set()
        self._queue: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name=f"events-{run_id}")

    def __call__(self, record: dict[str, Any]) -> None:
        self.seq += 1
        self._queue.put_nowait((self.seq, record))
        kind = record.get("event")
        if kind == "model_call":
            add_model_call(self.spend, record)
        elif kind == "rlm_start" and record.get("box_id"):
            self._open_boxes.add(str(record.get("rlm_id")))
            self.metrics.boxes.inc()
        elif kind == "rlm_end" and str(record.get("rlm_id")) in self._open_boxes:
            self._open_boxes.discard(str(record.get("rlm_id")))
            self.metrics.boxes.dec()
        self.metrics.observe_event(self.tenant_name, record)

    def service_event(self, event: str, **fields: Any) -> None:
        """An event of the service's own (not the run's): same numbering, same stream."""
        self({"event": event, "run_id": self.run_id, **fields})

    async def _write(self) -> None:
        while True:
            item = await self._queue.get()
            batch = [item]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            done = None in batch
            items = [i for i in batch if i is not None]
            try:
                await self.store.add_events(self.tenant_id, self.run_id, items)
            except Exception:
                log.exception("events_not_stored", run_id=self.run_id, count=len(items))
            self.hub.notify(self.run_id)
            if done:
                return

    async def close(self) -> int:
        """Write what is queued; returns the last event number. Boxes the run still counted
        (it was cancelled before their end event) are closed by then."""
        for _ in self._open_boxes:
            self.metrics.boxes.dec()
        self._open_boxes.clear()
        self._queue.put_nowait(None)
        await asyncio.shield(self._writer)
        return self.seq


async def load_context(run_context: Any, context_path: str | None, kind: str | None) -> Any:
    """The run's context: inline, or read from an uploaded file (off the event loop)."""
    if context_path is None:
        return run_context if run_context is not None else ""

    def read() -> Any:
        data = Path(context_path).read_bytes()
        if kind == "json":
            return json.loads(data)
        return data.decode("utf-8", errors="replace")

    return await asyncio.to_thread(read)


def build_rlm(config: Config, settings: RunSettings, *, run_id: str, tenant_id: str, limits: Limits,
              on_event: Any) -> RLM:
    """The RLM for one run. Provider URLs and keys come from the server's configuration only."""
    root = config.model(settings.model)
    sub = config.model(settings.sub_model)
    environment_kwargs: dict[str, Any] = {
        "memory_mb": settings.memory_mb,
        "cpus": settings.cpus,
        "env": {RUN_MARKER_ENV: run_id},
        "labels": {"run_id": run_id, "tenant_id": tenant_id},
    }
    if settings.backend == "docker" and settings.runtime is not None:
        environment_kwargs["runtime"] = settings.runtime
    extra: dict[str, Any] = {}
    if settings.tools:
        extra["custom_tools"] = {name: config.tool(name) for name in settings.tools}
    return RLM(backend=root.backend, backend_kwargs=root.backend_kwargs(), environment=settings.backend,
               environment_kwargs=environment_kwargs, max_depth=settings.max_depth,
               max_iterations=settings.max_iterations, other_backends=[sub.backend],
               other_backend_kwargs=[sub.backend_kwargs()], limits=limits, on_event=on_event, **extra)


def run_limits(config: Config, settings: RunSettings, *, max_tokens: int | None, max_cost_usd: float | None) -> Limits:
    prices = {m.model_name or m.name: m.price for m in config.models.values() if m.price is not None}
    return Limits(max_llm_calls=settings.max_llm_calls, max_tokens=max_tokens, max_cost_usd=max_cost_usd,
                  max_wall_s=settings.max_wall_s, cell_timeout_s=settings.cell_timeout_s,
                  max_concurrent_children=MAX_CONCURRENT_CHILDREN, prices=prices or None)


def reap_run_boxes(run_id: str, environments: set[str]) -> int:
    """Remove every box of a run whose server died: local box processes found by their marker,
    Docker containers by their run label. Returns how many were found. Synchronous (run it in a thread)."""
    from sandboxes.backends.local import kill_sweep, marked_processes

    marker = f"{RUN_MARKER_ENV}={run_id}"
    found = len(marked_processes(marker))
    kill_sweep(lambda: marked_processes(marker))
    if "docker" in environments:
        try:
            from sandboxes.backends.docker.engine import engine_client
            from sandboxes.box_tags import RUN_ID_LABEL

            client = engine_client()
            for container in client.containers.list(all=True, filters={"label": f"{RUN_ID_LABEL}={run_id}"}):
                container.remove(force=True, v=True)
                found += 1
        except Exception:
            log.warning("docker_reap_failed", run_id=run_id, exc_info=True)
    return found
