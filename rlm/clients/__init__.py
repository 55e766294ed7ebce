"""Model clients, one per provider family, on the providers' official async SDKs.

``make_client`` picks the family by backend name; each family lives in its own module and is
imported only when used, so an installation without one SDK still serves the other.
"""

from __future__ import annotations

from typing import Any

from rlm.clients.base import ModelClient

OPENAI_COMPATIBLE = ("openai", "vllm", "openrouter", "litellm", "azure_openai")


def make_client(backend: str, backend_kwargs: dict[str, Any] | None, *, concurrency: int = 16) -> ModelClient:
    """Build the client for ``backend`` ("openai", "anthropic", or an OpenAI-compatible alias)."""
    kwargs = dict(backend_kwargs or {})
    model_name = kwargs.pop("model_name", None) or kwargs.pop("model", None)
    if backend in OPENAI_COMPATIBLE:
        from rlm.clients.openai import OpenAIClient

        return OpenAIClient(model_name, concurrency=concurrency, **kwargs)
    if backend == "anthropic":
        from rlm.clients.anthropic import AnthropicClient

        return AnthropicClient(model_name, concurrency=concurrency, **kwargs)
    raise ValueError(f"unknown backend {backend!r}: use 'openai' (or any OpenAI-compatible server via "
                     "backend_kwargs={'base_url': ...}) or 'anthropic'")
