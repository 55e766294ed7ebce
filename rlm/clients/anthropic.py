"""Anthropic messages, through the official ``anthropic`` async SDK."""

from __future__ import annotations

from typing import Any

import anthropic

from rlm.clients.base import (Message, ModelCallError, ModelClient, ModelResponse, estimate_tokens,
                              shared_ssl_context, translate_sdk_error)


class AnthropicClient(ModelClient):
    backend = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"
    example_model = "claude-sonnet-4-5"
    reserved_fields = ModelClient.reserved_fields | {"max_tokens", "system"}

    def _make_sdk(self) -> anthropic.AsyncAnthropic:
        kwargs: dict[str, Any] = {"api_key": self.api_key, "max_retries": 0,
                                  "http_client": anthropic.DefaultAsyncHttpxClient(verify=shared_ssl_context())}
        if self.base_url:
            kwargs["base_url"] = self.base_url
        return anthropic.AsyncAnthropic(**kwargs)

    async def _attempt(self, sdk: anthropic.AsyncAnthropic, messages: list[Message], max_output_tokens: int,
                       timeout: float) -> ModelResponse:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
        body: dict[str, Any] = {**self.options, "model": self.model_name, "max_tokens": max_output_tokens,
                                "messages": turns}
        if system:
            body["system"] = system
        try:
            data = await sdk.post("/v1/messages", cast_to=object, body=body,
                                  options={"timeout": timeout, "max_retries": 0})
        except anthropic.AnthropicError as exc:
            raise translate_sdk_error(anthropic, exc, self.model_name) from None
        return parse_message(data, self.model_name, messages)


def parse_message(data: Any, model: str, messages: list[Message]) -> ModelResponse:
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise ModelCallError(f"{model}: the provider's reply is not a message", retryable=True)
    text = "".join(block.get("text", "") for block in data["content"]
                   if isinstance(block, dict) and block.get("type") == "text")
    usage = data.get("usage") or {}
    input_tokens = usage.get("input_tokens")
    output_tokens = usage.get("output_tokens")
    reported = isinstance(input_tokens, int) and isinstance(output_tokens, int)
    if reported:
        # Cached prompt tokens are billed (at other rates) and count against the token budget.
        for extra in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            if isinstance(usage.get(extra), int):
                input_tokens += usage[extra]
    else:
        input_tokens = sum(estimate_tokens(m["content"]) for m in messages)
        output_tokens = estimate_tokens(text)
    return ModelResponse(text, int(input_tokens), int(output_tokens), data.get("stop_reason"),
                         usage_reported=reported)
