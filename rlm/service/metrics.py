"""Prometheus metrics of one server, on a registry of its own (never the process-wide default, so
two apps in one process, as in tests, do not collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("rlm_service_runs", "Runs that reached a status, by tenant", ["tenant", "status"],
                            registry=r)
        self.queue_depth = Gauge("rlm_service_queue_depth", "Queued runs by tenant", ["tenant"], registry=r)
        self.running = Gauge("rlm_service_running_runs", "Running runs by tenant", ["tenant"], registry=r)
        self.boxes = Gauge("rlm_service_active_boxes", "Sandboxes open now", registry=r)
        self.tokens = Counter("rlm_service_model_tokens", "Model tokens by tenant and model",
                              ["tenant", "model", "direction"], registry=r)
        self.dollars = Counter("rlm_service_model_usd", "Model spend in USD by tenant and model",
                               ["tenant", "model"], registry=r)
        self.model_latency = Histogram("rlm_service_model_call_seconds", "Model call latency (with retries)",
                                       ["model"], registry=r,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.cell_latency = Histogram("rlm_service_cell_seconds", "REPL cell duration", registry=r,
                                      buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300))

    def observe_event(self, tenant: str, record: dict[str, Any]) -> None:
        """Account one run event (called for every event as it is stored)."""
        kind = record.get("event")
        if kind == "model_call":
            model = str(record.get("model"))
            self.tokens.labels(tenant, model, "input").inc(int(record.get("input_tokens") or 0))
            self.tokens.labels(tenant, model, "output").inc(int(record.get("output_tokens") or 0))
            if record.get("cost_usd"):
                self.dollars.labels(tenant, model).inc(float(record["cost_usd"]))
            if record.get("seconds") is not None:
                self.model_latency.labels(model).observe(float(record["seconds"]))
        elif kind == "cell" and record.get("seconds") is not None:
            self.cell_latency.observe(float(record["seconds"]))

    def render(self) -> bytes:
        return generate_latest(self.registry)
