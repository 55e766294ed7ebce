import asyncio

import pytest

from rlm.budget import PRICES, Budget, LimitExceeded, Limits, Price, price_for


def test_price_lookup_handles_snapshots_but_not_other_models():
    assert price_for("gpt-4o-2024-08-06") == PRICES["gpt-4o"]
    assert price_for("gpt-4o-mini-2024-07-18") == PRICES["gpt-4o-mini"]
    assert price_for("claude-sonnet-4-5-20250929") == PRICES["claude-sonnet-4-5"]
    assert price_for("claude-opus-4-20250514") == PRICES["claude-opus-4"]
    assert price_for("gpt-5.5-pro") == PRICES["gpt-5.5-pro"]
    assert price_for("gpt-5-mini") == PRICES["gpt-5-mini"]
    assert price_for("openai/gpt-5-nano") == PRICES["gpt-5-nano"]
    assert price_for("my-local-llama") is None
    assert price_for("gpt-5-turbo-custom") is None


def test_price_table_override():
    limits = Limits(prices={"my-model": (1.0, 2.0), "gpt-5": Price(9.0, 9.0)})
    table = limits.price_table()
    assert table["my-model"].cost(1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table["gpt-5"].input_per_mtok == 9.0


def test_limits_validate():
    with pytest.raises(ValueError, match="max_llm_calls"):
        Limits(max_llm_calls=0)
    with pytest.raises(ValueError, match="cell_timeout_s"):
        Limits(cell_timeout_s=0)


def msgs(chars: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "x" * chars}]


async def test_call_limit_is_exact():
    budget = Budget(Limits(max_llm_calls=3))
    for _ in range(3):
        r = await budget.reserve("gpt-5-mini", msgs(10))
        budget.settle(r, 10, 10)
    with pytest.raises(LimitExceeded) as info:
        await budget.reserve("gpt-5-mini", msgs(10))
    assert info.value.limit == "max_llm_calls" and budget.tripped == "max_llm_calls"
    assert budget.tripped_event.is_set()


async def test_output_cap_shrinks_to_the_token_budget():
    budget = Budget(Limits(max_tokens=1000, max_output_tokens=4000))
    r = await budget.reserve("gpt-5-mini", msgs(200))  # input bound: 100 + 8 tokens
    assert r.max_output_tokens == 1000 - r.input_tokens


async def test_concurrent_calls_cannot_overspend_tokens():
    """Many calls at once: the sum of their worst cases never exceeds the budget."""
    limits = Limits(max_tokens=5000, max_output_tokens=500)
    budget = Budget(limits)
    in_flight_worst = []

    async def call():
        try:
            r = await budget.reserve("gpt-5-mini", msgs(100))
        except LimitExceeded:
            return
        in_flight_worst.append(budget._tokens_reserved + budget.tokens_used)
        await asyncio.sleep(0.01)
        budget.settle(r, r.input_tokens, r.max_output_tokens)  # every call spends its worst case

    await asyncio.gather(*(call() for _ in range(50)))
    assert budget.tokens_used <= 5000
    assert max(in_flight_worst) <= 5000
    assert budget.tripped == "max_tokens"


async def test_dollar_limit_with_known_price():
    budget = Budget(Limits(max_cost_usd=0.01, max_output_tokens=300))
    spent = 0
    while True:
        try:
            r = await budget.reserve("gpt-5", msgs(400))
        except LimitExceeded as exc:
            assert exc.limit == "max_cost_usd"
            break
        budget.settle(r, r.input_tokens, r.max_output_tokens)
        spent += 1
    assert budget.cost_used <= 0.01 + 1e-12
    assert spent >= 2


async def test_unknown_model_counts_tokens_with_unknown_cost():
    budget = Budget(Limits(max_cost_usd=1.0))
    r = await budget.reserve("my-local-llama", msgs(10))
    budget.settle(r, 100, 50)
    usage = budget.usage["my-local-llama"]
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (100, 50, None)
    assert usage.to_dict()["cost_known"] is False
    assert not budget.cost_known


async def test_wall_clock():
    now = [0.0]
    budget = Budget(Limits(max_wall_s=10), clock=lambda: now[0])
    budget.check()
    now[0] = 10.5
    with pytest.raises(LimitExceeded) as info:
        budget.check()
    assert info.value.limit == "max_wall_s"


def _rlm(model: str, sub_model: str | None = None, **kwargs):
    from rlm import RLM

    others = {"other_backends": ["openai"], "other_backend_kwargs": [{"model_name": sub_model, "api_key": "k"}]}
    return RLM(backend="openai", backend_kwargs={"model_name": model, "api_key": "k"},
               **(others if sub_model else {}), **kwargs)


def test_a_dollar_limit_is_refused_when_the_root_model_has_no_price():
    with pytest.raises(ValueError) as caught:
        _rlm("my-local-llama", limits=Limits(max_cost_usd=2.0))
    text = str(caught.value)
    assert "'my-local-llama' (the root model)" in text
    assert "prices={'my-local-llama': (" in text and "max_cost_usd=2" in text


def test_a_dollar_limit_is_refused_when_a_sub_call_model_has_no_price():
    with pytest.raises(ValueError, match=r"'my-sub' \(a sub-call model \(other_backends\)\)"):
        _rlm("gpt-5-mini", "my-sub", limits=Limits(max_cost_usd=2.0))
    with pytest.raises(ValueError, match=r"session_limits=Limits\(max_cost_usd=3\).*'my-sub'"):
        _rlm("gpt-5-mini", "my-sub", persistent=True, session_limits=Limits(max_cost_usd=3.0))


def test_a_dollar_limit_is_accepted_once_every_model_has_a_price():
    _rlm("gpt-5-mini", "my-sub", limits=Limits(max_cost_usd=2.0, prices={"my-sub": (0.1, 0.4)}))
    _rlm("my-local-llama", "my-sub")  # no dollar limit: unpriced models are fine (their cost is unknown)
