"""Per-tenant policy: what a tenant's runs may use, enforced by the server and never by the request.

A request may ask for less than the policy allows, never more: ``resolve`` turns a request into the
settings a run gets, or raises ``PolicyViolation`` naming the limit it went past. Anything the
request leaves out gets the policy's value (or a smaller everyday default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sandboxes.spec import BACKENDS

RUNTIMES = ("runc", "runsc")


class PolicyViolation(Exception):
    """A request asked for more than its tenant's policy allows."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class Policy:
    """Every setting of a tenant's policy. ``None`` means no limit (or, for lists, anything the
    server configures)."""

    # Sandbox backends and Docker runtimes the tenant may use; the first is the default. A platform
    # forces gVisor with backends=["docker"], runtimes=["runsc"].
    backends: tuple[str, ...] = ("docker",)
    runtimes: tuple[str, ...] = ("runc", "runsc")
    models: tuple[str, ...] | None = None
    tools: tuple[str, ...] | None = None
    # Caps per run.
    max_memory_mb: int = 2048
    max_cpus: float = 2.0
    max_cell_timeout_s: float = 120.0
    max_depth: int = 2
    max_iterations: int = 30
    max_wall_s: float = 1800.0
    max_llm_calls: int = 1000
    max_tokens: int | None = 5_000_000
    max_cost_usd: float | None = 5.0
    # Scheduling.
    max_concurrent_runs: int = 4
    max_queued_runs: int = 100
    # Daily quota (UTC days), over all of the tenant's runs.
    daily_usd: float | None = None
    daily_tokens: int | None = None

    def __post_init__(self) -> None:
        for backend in self.backends:
            if backend not in BACKENDS:
                raise ValueError(f"unknown sandbox backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if not self.backends:
            raise ValueError("backends: allow at least one sandbox backend")
        for runtime in self.runtimes:
            if runtime not in RUNTIMES:
                raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        if not self.runtimes:
            raise ValueError("runtimes: allow at least one (runc, runsc)")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{f.name} must not be negative")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Policy":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown policy field(s) {', '.join(unknown)}; known: {', '.join(names)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "Policy":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunSettings:
    """What one run gets once the policy is applied (stored with the run; the runner reads it)."""

    model: str
    sub_model: str
    backend: str
    runtime: str | None
    memory_mb: int
    cpus: float
    cell_timeout_s: float
    max_depth: int
    max_iterations: int
    max_wall_s: float
    max_llm_calls: int
    max_tokens: int | None
    max_cost_usd: float | None
    tools: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSettings":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def box_slots(self, max_concurrent_children: int) -> int:
        """Sandboxes the run may hold at once in the worst case: its own, and its children's per depth."""
        return 1 + max(self.max_depth - 1, 0) * max_concurrent_children


def _cap(name: str, asked: Any, policy: Policy, field: str, default: Any = None) -> Any:
    """``asked`` if within the policy's ``field`` (None: unlimited), else PolicyViolation naming that
    field; when not asked: the policy's value, or ``default`` if smaller."""
    allowed = getattr(policy, field)
    if asked is None:
        if default is None:
            return allowed
        return default if allowed is None else min(default, allowed)
    if allowed is not None and asked > allowed:
        raise PolicyViolation(field, f"{name}={asked} is above this tenant's policy limit {field}={allowed}")
    return asked


def resolve(policy: Policy, request: dict[str, Any], *, models: list[str], default_model: str | None,
            default_sub_model: str | None, tools: list[str], tools_supported: bool) -> RunSettings:
    """The settings of a run asked for by ``request`` (already schema-checked), or PolicyViolation.

    ``request`` holds the optional keys model, sub_model, tools, and the mappings ``sandbox``
    (backend, runtime, memory_mb, cpus) and ``limits`` (cell_timeout_s, max_depth, max_iterations,
    max_wall_s, max_llm_calls, max_tokens, max_cost_usd).
    """
    allowed_models = [m for m in models if policy.models is None or m in policy.models]

    def pick_model(name: str | None, default: str | None, what: str) -> str:
        if name is None:
            name = default if default in allowed_models else (allowed_models[0] if allowed_models else None)
            if name is None:
                raise PolicyViolation("models", "no model is available to this tenant; ask the operator")
        if name not in models:
            raise PolicyViolation("models", f"{what} {name!r} is not offered by this server; "
                                            f"available: {', '.join(allowed_models) or 'none'}")
        if name not in allowed_models:
            raise PolicyViolation("models", f"{what} {name!r} is not allowed by this tenant's policy; "
                                            f"allowed: {', '.join(allowed_models) or 'none'}")
        return name

    model = pick_model(request.get("model"), default_model, "model")
    sub_model = pick_model(request.get("sub_model"), default_sub_model or model, "sub_model")

    sandbox = request.get("sandbox") or {}
    backend = sandbox.get("backend") or policy.backends[0]
    if backend not in policy.backends:
        raise PolicyViolation("backends", f"sandbox backend {backend!r} is not allowed by this tenant's policy; "
                                          f"allowed: {', '.join(policy.backends)}")
    runtime = sandbox.get("runtime")
    if backend == "docker":
        runtime = runtime or policy.runtimes[0]
        if runtime not in policy.runtimes:
            raise PolicyViolation("runtimes", f"runtime {runtime!r} is not allowed by this tenant's policy; "
                                              f"allowed: {', '.join(policy.runtimes)}")
    elif runtime is not None:
        raise PolicyViolation("runtimes", f"a runtime applies to the docker backend only, not {backend!r}")

    asked_tools = tuple(request.get("tools") or ())
    for tool in asked_tools:
        if tool not in tools:
            raise PolicyViolation("tools", f"tool {tool!r} is not in this server's registry; "
                                           f"available: {', '.join(tools) or 'none'}")
        if policy.tools is not None and tool not in policy.tools:
            raise PolicyViolation("tools", f"tool {tool!r} is not allowed by this tenant's policy")
    if asked_tools and not tools_supported:
        raise PolicyViolation("tools", "this server's RLM version does not support custom tools")

    limits = request.get("limits") or {}
    return RunSettings(
        model=model,
        sub_model=sub_model,
        backend=backend,
        runtime=runtime,
        memory_mb=_cap("memory_mb", sandbox.get("memory_mb"), policy, "max_memory_mb", 1024),
        cpus=_cap("cpus", sandbox.get("cpus"), policy, "max_cpus", 1.0),
        cell_timeout_s=_cap("cell_timeout_s", limits.get("cell_timeout_s"), policy, "max_cell_timeout_s"),
        max_depth=_cap("max_depth", limits.get("max_depth"), policy, "max_depth", 1),
        max_iterations=_cap("max_iterations", limits.get("max_iterations"), policy, "max_iterations"),
        max_wall_s=_cap("max_wall_s", limits.get("max_wall_s"), policy, "max_wall_s"),
        max_llm_calls=_cap("max_llm_calls", limits.get("max_llm_calls"), policy, "max_llm_calls"),
        max_tokens=_cap("max_tokens", limits.get("max_tokens"), policy, "max_tokens"),
        max_cost_usd=_cap("max_cost_usd", limits.get("max_cost_usd"), policy, "max_cost_usd"),
        tools=asked_tools,
    )
