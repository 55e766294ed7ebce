"""One account per run tree: model calls, tokens, dollars and the wall clock, shared by every child.

The controller enforces every limit here; nothing a sandbox says about its own spend is believed.
Spending is *reserved* before a model call and *settled* after it, so concurrent calls (a batched
fan-out, several child RLMs) can never overspend together: a call is admitted only when the worst
case of everything in flight still fits. The worst case of one call is its estimated input plus the
output cap sent with it, and that cap is shrunk to what the budget still allows.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from sandboxes.logs import get_logger

from rlm.model_names import name_lookup
from rlm.windows import output_room

log = get_logger("rlm.budget")

@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


# List prices of current OpenAI and Anthropic models, standard tier, no caching or batch discount,
# prompts under any long-context threshold. Override or extend with Limits(prices={...}).
PRICES_AS_OF = "2026-05"
PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-5.5": Price(5.00, 30.00),
    "gpt-5.5-pro": Price(30.00, 180.00),
    "gpt-5.4": Price(2.50, 15.00),
    "gpt-5.4-pro": Price(30.00, 180.00),
    "gpt-5.4-mini": Price(0.75, 4.50),
    "gpt-5.2": Price(1.75, 14.00),
    "gpt-5.1": Price(1.25, 10.00),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-pro": Price(15.00, 120.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    # Anthropic
    "claude-opus-4-6": Price(5.00, 25.00),
    "claude-opus-4-5": Price(5.00, 25.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-sonnet-4-6": Price(3.00, 15.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-haiku": Price(0.25, 1.25),
}


def price_for(model: str, table: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model``: an exact entry, or the longest entry it is a dated snapshot of.

    ``gpt-4o-2024-08-06`` is priced as ``gpt-4o`` and ``claude-sonnet-4-5-20250929`` as
    ``claude-sonnet-4-5``, but ``gpt-5.5-pro`` is never priced as ``gpt-5.5``: only a suffix that is
    a date or version number (``-2024...``, ``-latest``) extends a name. None when unknown.
    """
    return name_lookup(model, PRICES if table is None else table)


@dataclass(frozen=True)
class Limits:
    """Every limit of one run tree (the root RLM and all its children share one budget).

    ``None`` disables a limit. Iterations per RLM and recursion depth are set on ``RLM`` itself
    (``max_iterations``, ``max_depth``), as in the reference implementation.
    """

    max_llm_calls: int | None = 1000
    max_tokens: int | None = None  # input + output, all models
    max_cost_usd: float | None = None
    max_wall_s: float | None = 3600.0
    cell_timeout_s: float = 120.0  # per REPL cell; the cell is stopped and the model is told
    # Cells of one RLM that may run past cell_timeout_s; the next one ends the run (status
    # "cell_timeout_s"). One slow cell is the model's to fix, not a reason to lose the run.
    max_cell_timeouts: int = 3
    model_timeout_s: float = 300.0  # per model request attempt
    max_retries: int = 4  # per model call, on 429, 5xx, timeouts and dropped connections
    max_output_tokens: int = 16384  # output cap sent with each model call
    max_concurrency: int = 32  # model calls in flight at once, whole run tree
    max_concurrent_children: int = 4  # child RLMs (each with its own sandbox) running at once
    max_output_chars: int = 20_000  # REPL output fed back to the model per cell (head and tail)
    # Custom tools (RLM(custom_tools=...)). Tool calls are counted against a cap of their own, not
    # max_llm_calls: a tool is the user's function with costs of its own (an API, a database), and a
    # run that greps with a tool a thousand times should not lose its model calls to it. Reaching
    # the cap ends the run like any limit (status "max_tool_calls").
    max_tool_calls: int | None = 1000
    max_concurrent_tools: int = 8  # tool calls running at once, whole run tree
    tool_timeout_s: float = 60.0  # per tool call; the kernel gets a ToolError when it runs over
    # USD per million tokens by model name; merged over PRICES. Values: Price or (input, output).
    prices: Mapping[str, Any] | None = None
    # Context window in tokens by model name; merged over rlm.windows.WINDOWS. Bounds the output cap
    # sent with each call and tells compaction when to summarise.
    context_windows: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        for name in ("max_llm_calls", "max_tokens", "max_cost_usd", "max_wall_s", "max_tool_calls"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Limits.{name} must be positive or None (no limit)")
        for name in ("cell_timeout_s", "max_cell_timeouts", "model_timeout_s", "max_output_tokens", "max_concurrency",
                     "max_concurrent_children", "max_output_chars", "max_concurrent_tools", "tool_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")
        if self.max_retries < 0:
            raise ValueError("Limits.max_retries must be 0 or more")

    def price_table(self) -> dict[str, Price]:
        table = dict(PRICES)
        for name, value in (self.prices or {}).items():
            table[name.lower()] = value if isinstance(value, Price) else Price(float(value[0]), float(value[1]))
        return table


class LimitExceeded(Exception):
    """A limit of the run tree was hit. ``limit`` is the status the run ends with."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def require_prices(models: Mapping[str, str], limits: Limits, session_limits: Limits | None = None) -> None:
    """Refuse a dollar limit that could not be enforced: with ``max_cost_usd`` set (per run or per
    session), every model the run may call needs a price, or its spend would count as zero.

    ``models`` maps each model name to what it is used for ("the root model", ...). Prices come from
    ``limits.prices`` over ``PRICES``, as the budget reads them. Raises ValueError naming the first
    unpriced model and how to give its price.
    """
    capped = [(name, cap) for name, cap in (("limits", limits.max_cost_usd),
                                            ("session_limits", session_limits and session_limits.max_cost_usd))
              if cap is not None]
    if not capped:
        return
    table = limits.price_table()
    unpriced = [(model, role) for model, role in models.items() if price_for(model, table) is None]
    if not unpriced:
        return
    model, role = unpriced[0]
    where, cap = capped[0]
    others = f" (also unpriced: {', '.join(repr(m) for m, _ in unpriced[1:])})" if len(unpriced) > 1 else ""
    raise ValueError(
        f"{where}=Limits(max_cost_usd={cap:g}) cannot be enforced: model {model!r} ({role}) has no price in "
        f"rlm.PRICES{others}, so its spend would count as zero. Give its price in USD per million tokens "
        f"(input, output): limits=Limits(max_cost_usd={cap:g}, prices={{{model!r}: (0.25, 2.00)}}), "
        "or set no dollar limit (use max_tokens / max_llm_calls instead)")


@dataclass
class ModelUsage:
    """What one model cost in one run tree."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # None when the model is not in the price table: its tokens count, its cost is unknown.
    cost_usd: float | None = 0.0
    retries: int = 0
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "cost_known": self.cost_usd is not None,
            "retries": self.retries,
            "failures": self.failures,
        }

    def add(self, other: "ModelUsage") -> None:
        """Add ``other`` in; the cost stays known only while both are."""
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.retries += other.retries
        self.failures += other.failures
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd


@dataclass
class ToolUsage:
    """What one custom tool did in one run tree."""

    calls: int = 0
    failures: int = 0  # raised, timed out, or returned something that is not JSON
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "failures": self.failures, "seconds": round(self.seconds, 4)}


@dataclass
class Reservation:
    model: str
    input_tokens: int
    max_output_tokens: int
    tokens: int
    cost_usd: float
    settled: bool = False


# Worst-case input estimate: one token per 2 bytes of UTF-8 bounds English (~4.5 bytes/token),
# code (~3) and CJK text (~2-3) from above, plus a little per message for the chat framing.
BYTES_PER_TOKEN_BOUND = 2
TOKENS_PER_MESSAGE = 8
# A call whose output cap would be smaller than this is not worth making.
MIN_OUTPUT_TOKENS = 128


def estimate_input_tokens(messages: list[dict[str, str]]) -> int:
    size = sum(len(m["content"].encode("utf-8", "replace")) for m in messages)
    return math.ceil(size / BYTES_PER_TOKEN_BOUND) + TOKENS_PER_MESSAGE * len(messages)


class Budget:
    """The shared account. Lives on one event loop (the run tree's)."""

    def __init__(self, limits: Limits, *, clock: Any = time.monotonic) -> None:
        self.limits = limits
        self.prices = limits.price_table()
        self._clock = clock
        self.started = clock()
        self.deadline: float | None = self.started + limits.max_wall_s if limits.max_wall_s else None
        self.calls = 0
        self.tokens_used = 0
        self.cost_used = 0.0
        self._tokens_reserved = 0
        self._cost_reserved = 0.0
        self._outstanding = 0
        self.usage: dict[str, ModelUsage] = {}
        self.tool_calls = 0
        self.tool_usage: dict[str, ToolUsage] = {}
        self.tripped: str | None = None
        self.trip_message: str | None = None
        self.tripped_event = asyncio.Event()
        # Replaced on every settlement; calls waiting for room wait on the current one.
        self._settled = asyncio.Event()
        self._unpriced_warned: set[str] = set()

    # -- the wall clock --------------------------------------------------------------------------

    def remaining_s(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - self._clock()

    # -- limits ----------------------------------------------------------------------------------

    def trip(self, limit: str, message: str) -> LimitExceeded:
        """Record that the tree hit ``limit`` (first one wins) and return the error to raise."""
        if self.tripped is None:
            self.tripped = limit
            self.trip_message = message
            self.tripped_event.set()
            log.info("limit_reached", limit=limit, message=message)
        return LimitExceeded(self.tripped, self.trip_message or message)

    def check(self) -> None:
        """Raise LimitExceeded if the tree is already out of budget or time."""
        if self.tripped is not None:
            raise LimitExceeded(self.tripped, self.trip_message or self.tripped)
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            raise self.trip("max_wall_s", f"the run reached its wall-clock limit of {self.limits.max_wall_s:g} s")

    def price(self, model: str) -> Price | None:
        price = price_for(model, self.prices)
        if price is None and model not in self._unpriced_warned:
            self._unpriced_warned.add(model)
            log.warning("model_cost_unknown", model=model,
                        hint="add it with Limits(prices={model: (usd_in_per_mtok, usd_out_per_mtok)})")
        return price

    def _usage(self, model: str) -> ModelUsage:
        usage = self.usage.get(model)
        if usage is None:
            usage = self.usage[model] = ModelUsage(cost_usd=0.0 if self.price(model) is not None else None)
        return usage

    async def reserve(self, model: str, messages: list[dict[str, str]]) -> Reservation:
        """Admit one model call, or raise LimitExceeded naming the limit that stops it.

        Waits (never past the deadline) when calls in flight hold the room this one needs: once they
        settle, their real spend is usually far below their worst case.
        """
        limits = self.limits
        input_tokens = estimate_input_tokens(messages)
        price = self.price(model)
        while True:
            self.check()
            if limits.max_llm_calls is not None and self.calls >= limits.max_llm_calls:
                raise self.trip("max_llm_calls", f"the run made its limit of {limits.max_llm_calls} model calls")
            allowance = limits.max_output_tokens
            binding = None
            if limits.max_tokens is not None:
                room = limits.max_tokens - self.tokens_used - self._tokens_reserved - input_tokens
                if room < allowance:
                    allowance, binding = room, "max_tokens"
            if limits.max_cost_usd is not None and price is not None:
                usd_room = limits.max_cost_usd - self.cost_used - self._cost_reserved - price.cost(input_tokens, 0)
                out_room = math.floor(usd_room / price.output_per_mtok * 1e6) if price.output_per_mtok else allowance
                if out_room < allowance:
                    allowance, binding = out_room, "max_cost_usd"
            if allowance >= min(MIN_OUTPUT_TOKENS, limits.max_output_tokens):
                break
            if self._outstanding == 0:
                assert binding is not None
                what = (f"{limits.max_tokens} tokens" if binding == "max_tokens"
                        else f"${limits.max_cost_usd:g}")
                raise self.trip(binding, f"the run's budget of {what} cannot cover another model call")
            await self._wait_for_settlement()
        room = output_room(model, messages, limits.context_windows)
        if room is not None and room < allowance:
            # Never ask for more output than the window leaves; if even the minimum does not fit, the
            # provider's own count decides (our estimate errs high), and says "context length exceeded".
            allowance = max(room, min(MIN_OUTPUT_TOKENS, allowance))
        cost = price.cost(input_tokens, allowance) if price is not None else 0.0
        reservation = Reservation(model, input_tokens, allowance, input_tokens + allowance, cost)
        self.calls += 1
        self._tokens_reserved += reservation.tokens
        self._cost_reserved += cost
        self._outstanding += 1
        return reservation

    async def _wait_for_settlement(self) -> None:
        try:
            await asyncio.wait_for(self._settled.wait(), self.remaining_s())
        except TimeoutError:
            pass  # check() on the next pass reports the wall clock

    def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int, *,
               retries: int = 0, failed: bool = False) -> float | None:
        """Replace a reservation by what the call really used. Returns the call's cost (None if unknown)."""
        if reservation.settled:
            return None
        reservation.settled = True
        self._tokens_reserved -= reservation.tokens
        self._cost_reserved -= reservation.cost_usd
        self._outstanding -= 1
        usage = self._usage(reservation.model)
        usage.calls += 1
        usage.retries += retries
        usage.failures += int(failed)
        usage.input_tokens += input_tokens
        usage.output_tokens += output_tokens
        self.tokens_used += input_tokens + output_tokens
        price = self.price(reservation.model)
        cost = price.cost(input_tokens, output_tokens) if price is not None else None
        if cost is not None:
            self.cost_used += cost
            if usage.cost_usd is not None:
                usage.cost_usd += cost
        if self._outstanding == 0:
            # Float drift must not leave phantom reservations behind.
            self._tokens_reserved = 0
            self._cost_reserved = 0.0
        settled, self._settled = self._settled, asyncio.Event()
        settled.set()
        return cost

    def admit_tool(self, name: str) -> None:
        """Count one tool call, or raise LimitExceeded when the run is out of tool calls or time."""
        self.check()
        cap = self.limits.max_tool_calls
        if cap is not None and self.tool_calls >= cap:
            raise self.trip("max_tool_calls", f"the run made its limit of {cap} tool calls")
        self.tool_calls += 1
        self.tool_usage.setdefault(name, ToolUsage()).calls += 1

    def record_tool(self, name: str, seconds: float, *, failed: bool) -> None:
        usage = self.tool_usage.setdefault(name, ToolUsage())
        usage.seconds += seconds
        usage.failures += int(failed)

    @property
    def cost_known(self) -> bool:
        return all(u.cost_usd is not None for u in self.usage.values())


@dataclass
class Totals:
    """Sums over all models, for a one-line summary."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    models: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, usage: Mapping[str, ModelUsage]) -> "Totals":
        total = ModelUsage()
        for item in usage.values():
            total.add(item)
        return cls(calls=total.calls, input_tokens=total.input_tokens, output_tokens=total.output_tokens,
                   cost_usd=total.cost_usd, models=list(usage))
