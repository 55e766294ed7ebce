"""OpenAI chat completions, through the official ``openai`` async SDK.

Works with any OpenAI-compatible server (vLLM, OpenRouter, LiteLLM, a local fake) via ``base_url``;
``OPENAI_BASE_URL`` is honoured by the SDK when none is given.
"""

from __future__ import annotations

from typing import Any

import openai

from rlm.clients.base import (Message, ModelCallError, ModelClient, ModelResponse, estimate_tokens,
                              shared_ssl_context, translate_sdk_error)


class OpenAIClient(ModelClient):
    backend = "openai"
    api_key_env = "OPENAI_API_KEY"
    example_model = "gpt-5-mini"
    reserved_fields = ModelClient.reserved_fields | {"max_tokens", "max_completion_tokens"}

    def __init__(self, model_name: str, *, max_tokens_param: str = "max_completion_tokens", **kwargs: Any) -> None:
        # Older OpenAI-compatible servers only know "max_tokens".
        self.max_tokens_param = max_tokens_param
        super().__init__(model_name, **kwargs)

    def _make_sdk(self) -> openai.AsyncOpenAI:
        kwargs: dict[str, Any] = {"api_key": self.api_key, "max_retries": 0,
                                  "http_client": openai.DefaultAsyncHttpxClient(verify=shared_ssl_context())}
        if self.base_url:
            kwargs["base_url"] = self.base_url
        return openai.AsyncOpenAI(**kwargs)

    async def _attempt(self, sdk: openai.AsyncOpenAI, messages: list[Message], max_output_tokens: int,
                       timeout: float) -> ModelResponse:
        body: dict[str, Any] = {**self.options, "model": self.model_name, "messages": messages,
                                self.max_tokens_param: max_output_tokens}
        try:
            data = await sdk.post("/chat/completions", cast_to=object, body=body,
                                  options={"timeout": timeout, "max_retries": 0})
        except openai.OpenAIError as exc:
            raise translate_sdk_error(openai, exc, self.model_name) from None
        return parse_chat_completion(data, self.model_name, messages)


def parse_chat_completion(data: Any, model: str, messages: list[Message]) -> ModelResponse:
    if not isinstance(data, dict):
        raise ModelCallError(f"{model}: the provider's reply is not a JSON object", retryable=True)
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise ModelCallError(f"{model}: the provider's reply has no choices", retryable=True)
    message = choices[0].get("message") or {}
    text = message.get("content") or ""
    if isinstance(text, list):  # some compatible servers send content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    usage = data.get("usage") or {}
    input_tokens = usage.get("prompt_tokens")
    output_tokens = usage.get("completion_tokens")
    reported = isinstance(input_tokens, int) and isinstance(output_tokens, int)
    if not reported:
        input_tokens = sum(estimate_tokens(m["content"]) for m in messages)
        output_tokens = estimate_tokens(text)
    return ModelResponse(str(text), int(input_tokens), int(output_tokens), choices[0].get("finish_reason"),
                         usage_reported=reported)
