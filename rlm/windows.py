"""Context windows: how many tokens a model can take in one request, and how full a request is.

Used for two things: compaction (summarise the root conversation before it outgrows the window) and
the output cap sent with each call (never more than the window has left after the input). The table
holds the most a request may carry as input plus output cap; where a provider documents a separate
input limit (OpenAI's GPT-5 family: 272k input, 128k output, 400k in all) the table holds the input
limit, which is the one a conversation can outgrow. Override or extend it with
``Limits(context_windows={"my-model": tokens})``; a model in neither gets no output clamp, and
compaction assumes ``DEFAULT_WINDOW`` for it (a provider's "context length exceeded" answer is still
recognised and, with compaction on, compacts and retries once).
"""

from __future__ import annotations

import math
from typing import Mapping

from rlm.model_names import name_lookup

WINDOWS_AS_OF = "2026-05"
WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-5.2": 272_000,
    "gpt-5.1": 272_000,
    "gpt-5": 272_000,
    "gpt-5-mini": 272_000,
    "gpt-5-nano": 272_000,
    "gpt-5-pro": 272_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    # Anthropic (the standard window; the 1M-token beta is opt-in per request)
    "claude-opus-4-6": 200_000,
    "claude-opus-4-5": 200_000,
    "claude-opus-4-1": 200_000,
    "claude-opus-4": 200_000,
    "claude-sonnet-4-6": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-haiku-4-5": 200_000,
    "claude-3-7-sonnet": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-haiku": 200_000,
}
# What compaction assumes for a model of unknown window (the reference implementation's default).
DEFAULT_WINDOW = 128_000

# A realistic (not worst-case) estimate: English runs about 4 characters per token, code about 3.
# Erring high makes compaction a little early and the output cap a little small, never too large.
CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4


def window_for(model: str, overrides: Mapping[str, int] | None = None) -> int | None:
    """The context window of ``model`` in tokens (an override first, then the table), or None."""
    if overrides:
        found = name_lookup(model, {k.lower(): v for k, v in overrides.items()})
        if found is not None:
            return int(found)
    return name_lookup(model, WINDOWS)


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """Tokens a request of ``messages`` is likely to take, erring high."""
    chars = sum(len(m["content"]) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


def output_room(model: str, messages: list[dict[str, str]], overrides: Mapping[str, int] | None = None) -> int | None:
    """What the window leaves for output after ``messages``; None when the window is unknown."""
    window = window_for(model, overrides)
    if window is None:
        return None
    return window - estimate_tokens(messages)
