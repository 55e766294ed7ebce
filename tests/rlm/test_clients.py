"""The model clients against the fake server, through the official SDKs and real HTTP."""

import time

import anthropic
import openai
import pytest

from rlm.clients import make_client
from rlm.clients.base import ModelCallError, ModelTimeoutError, RetryPolicy
from rlm.testing import FakeLLMServer, Reply, Script

BACKENDS = ["openai", "anthropic"]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
FAST_RETRY = RetryPolicy(max_retries=3, initial_delay_s=0.01, max_delay_s=0.05)


def client_for(server, backend, **kwargs):
    return make_client(backend, {"model_name": "gpt-5-mini" if backend == "openai" else "claude-haiku-4-5",
                                 "base_url": server.base_url_for(backend), "api_key": "k", **kwargs})


@pytest.mark.parametrize("backend", BACKENDS)
async def test_reply_and_usage(server, backend):
    server.policy = lambda r: Reply(text=f"[{r.system}] {r.last_user}", input_tokens=11, output_tokens=7)
    client = client_for(server, backend)
    response = await client.complete(MESSAGES, max_output_tokens=100, timeout=5)
    await client.aclose()
    assert response.text == "[be brief] hello there"
    assert (response.input_tokens, response.output_tokens, response.attempts) == (11, 7, 1)
    request = server.requests[-1]
    assert request.api == backend and request.max_tokens == 100


@pytest.mark.parametrize("backend", BACKENDS)
async def test_429_twice_then_success_is_retried_and_reported(server, backend):
    server.fail_next(2, status=429)
    seen = []
    client = client_for(server, backend)
    response = await client.complete(MESSAGES, max_output_tokens=50, timeout=5, retry=FAST_RETRY,
                                     on_retry=lambda attempt, exc, delay: seen.append((attempt, exc.status)))
    await client.aclose()
    assert response.text.startswith("echo:")
    assert response.attempts == 3
    assert seen == [(1, 429), (2, 429)]
    assert server.request_count == 3


async def test_retry_after_header_is_honoured(server):
    server.fail_next(1, status=429, retry_after=0.3)
    client = client_for(server, "openai")
    started = time.monotonic()
    await client.complete(MESSAGES, max_output_tokens=50, timeout=5, retry=FAST_RETRY)
    await client.aclose()
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("status", [500, 503, 529])
async def test_server_errors_are_retried(server, status):
    server.fail_next(1, status=status)
    client = client_for(server, "anthropic")
    response = await client.complete(MESSAGES, max_output_tokens=50, timeout=5, retry=FAST_RETRY)
    await client.aclose()
    assert response.attempts == 2


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(server, status):
    server.fail_next(5, status=status)
    client = client_for(server, "openai")
    with pytest.raises(ModelCallError) as info:
        await client.complete(MESSAGES, max_output_tokens=50, timeout=5, retry=FAST_RETRY)
    await client.aclose()
    assert info.value.status == status and not info.value.retryable
    assert server.request_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_provider_that_never_answers_times_out(server, backend):
    server.hang_next(10)
    client = client_for(server, backend)
    started = time.monotonic()
    with pytest.raises(ModelTimeoutError):
        await client.complete(MESSAGES, max_output_tokens=50, timeout=0.3, retry=RetryPolicy(max_retries=1,
                                                                                              initial_delay_s=0.01))
    await client.aclose()
    # Two tries of 0.3 s each, not the 10 s the server would hang: a wide margin for a loaded machine.
    assert time.monotonic() - started < 6
    assert server.request_count == 2  # one try, one retry


async def test_retries_never_outlive_the_deadline(server):
    server.fail_next(100, status=503)
    client = client_for(server, "openai")
    started = time.monotonic()
    with pytest.raises(ModelCallError):
        await client.complete(MESSAGES, max_output_tokens=50, timeout=5, deadline=time.monotonic() + 0.5,
                              retry=RetryPolicy(max_retries=50, initial_delay_s=0.05, max_delay_s=0.1))
    await client.aclose()
    # Fifty retries would take at least 2.5 s (each waits 0.05 s or more) and make 51 requests; the
    # 0.5 s deadline leaves room for about ten. A slow machine makes fewer, never more.
    assert server.request_count <= 12
    assert time.monotonic() - started < 2.5


def test_missing_key_and_model_say_what_to_do(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        make_client("openai", {"model_name": "gpt-5-mini"})
    with pytest.raises(ValueError, match="model_name"):
        make_client("anthropic", {"api_key": "k"})
    with pytest.raises(ValueError, match="unknown backend"):
        make_client("bard", {"model_name": "x", "api_key": "k"})


async def test_fake_server_is_understood_by_the_sdks_typed_parsers():
    """The fake wire format is the real one: the SDKs' own typed responses parse it."""
    with FakeLLMServer(Script(["one", "two"])) as server:
        oai = openai.AsyncOpenAI(api_key="k", base_url=server.openai_base_url, max_retries=0)
        completion = await oai.chat.completions.create(model="gpt-5-mini", messages=MESSAGES)
        assert completion.choices[0].message.content == "one"
        assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
        ant = anthropic.AsyncAnthropic(api_key="k", base_url=server.anthropic_base_url, max_retries=0)
        message = await ant.messages.create(model="claude-haiku-4-5", max_tokens=10, system="s",
                                            messages=MESSAGES[1:])
        assert message.content[0].text == "two" and message.usage.output_tokens > 0
        await oai.close()
        await ant.close()


async def test_latency_is_simulated_concurrently():
    with FakeLLMServer(latency=0.2) as server:
        client = client_for(server, "openai")
        import asyncio

        started = time.monotonic()
        await asyncio.gather(*(client.complete(MESSAGES, max_output_tokens=10, timeout=5) for _ in range(8)))
        elapsed = time.monotonic() - started
        await client.aclose()
        assert elapsed >= 0.2  # the latency is there...
        assert server.max_in_flight >= 4  # ...and calls wait it out together, not one after another
