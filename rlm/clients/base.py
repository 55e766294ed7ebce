"""What a model client is: one model behind one provider, called with chat messages.

Clients are built on the providers' official async SDKs. The SDKs' own retries are switched off
(``max_retries=0``): retrying happens here, so that every retry is visible (logged, counted in the
run's usage, written to the run log) and none outlives the run's wall-clock deadline.

Requests go through the SDK's generic ``post`` (documented for calling endpoints directly) with a
plain dict body, and the JSON reply is read as a dict. That keeps the SDK's transport, auth, headers,
timeouts and typed errors while skipping its per-call schema transforms and model construction,
which cost more CPU than the rest of a fan-out of hundreds of calls.

One client serves a whole run tree, on the run's event loop. It holds a few SDK clients ("lanes")
used in turn, so that no single HTTP connection pool grows to dozens of idle connections (the
pool rescans every idle connection on every request).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import itertools
import os
import random
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from sandboxes.logs import get_logger

log = get_logger("rlm.clients")

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}

# Concurrent requests per SDK client (lane); more concurrency means more lanes.
REQUESTS_PER_LANE = 4
MAX_LANES = 16


@dataclass(frozen=True)
class ModelResponse:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str | None = None
    attempts: int = 1
    # False when the provider sent no usage and the counts are estimates from the text.
    usage_reported: bool = True


class ModelCallError(Exception):
    """A model call failed. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts


class ModelTimeoutError(ModelCallError):
    """The provider did not answer within the call's timeout."""


class ContextWindowError(ModelCallError):
    """The request (input plus output cap) does not fit the model's context window; retrying cannot help."""


# How providers say a request outgrew the window: OpenAI's code, Anthropic's message, and the words of
# common OpenAI-compatible servers (vLLM, llama.cpp, LiteLLM).
CONTEXT_WINDOW_CODES = ("context_length_exceeded", "exceed_context_size_error")
_CONTEXT_WINDOW_WORDS = re.compile(
    r"prompt is too long|context[_ ]length|maximum context|context window|exceeds? (the )?(available )?context"
    r"|exceed context limit", re.IGNORECASE)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    # A server asking for a longer wait than this is not waited for.
    max_retry_after_s: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after_s)
        base = min(self.max_delay_s, self.initial_delay_s * (2 ** retry))
        return base * (0.5 + random.random() / 2)  # jitter keeps a fan-out from retrying in lockstep


RetryHook = Callable[[int, ModelCallError, float], None]


class ModelClient(abc.ABC):
    """One model on one provider. Subclasses implement ``_make_sdk`` and ``_attempt``."""

    backend: ClassVar[str] = "?"
    api_key_env: ClassVar[str] = ""

    def __init__(self, model_name: str, *, api_key: str | None = None, base_url: str | None = None,
                 concurrency: int = 16, sampling_args: Mapping[str, Any] | None = None, **options: Any) -> None:
        if not model_name:
            raise ValueError(f"backend_kwargs for {self.backend!r} need a model_name, e.g. "
                             f"{{'model_name': '{self.example_model}'}}")
        self.model_name = model_name
        self.api_key = api_key or os.environ.get(self.api_key_env) or None
        if self.api_key is None:
            raise ValueError(f"no API key for the {self.backend} backend: set {self.api_key_env} "
                             f"or pass backend_kwargs={{'api_key': ...}}")
        self.base_url = base_url
        # Extra request fields (temperature, reasoning_effort, ...), sent as given.
        self.options = self._request_fields(options, sampling_args)
        lanes = max(1, min(MAX_LANES, -(-concurrency // REQUESTS_PER_LANE)))
        self._lane_count = lanes
        self._lanes: list[Any] = []
        self._next_lane = itertools.count()

    example_model: ClassVar[str] = "model-name"
    # Request fields the client sets itself: extra options may never replace them.
    reserved_fields: ClassVar[frozenset[str]] = frozenset({"model", "messages", "stream"})

    def _request_fields(self, options: Mapping[str, Any],
                        sampling_args: Mapping[str, Any] | None) -> dict[str, Any]:
        """backend_kwargs' extra keys, then ``sampling_args`` over them (the reference's name; its
        ``extra_body`` entries are merged in flat, as the SDKs send them). None values are dropped."""
        if sampling_args is not None and not isinstance(sampling_args, Mapping):
            raise TypeError("sampling_args must be a dict of request fields, e.g. {'temperature': 0.2}")
        fields = {**options, **(sampling_args or {})}
        extra_body = fields.pop("extra_body", None) or {}
        if not isinstance(extra_body, Mapping):
            raise TypeError("sampling_args['extra_body'] must be a dict")
        fields.update(extra_body)
        taken = sorted(set(fields) & self.reserved_fields)
        if taken:
            raise ValueError(f"{self.backend} request fields {taken} are set by the RLM and cannot be passed in "
                             "backend_kwargs or sampling_args: the model is backend_kwargs['model_name'], the "
                             "messages are the RLM's, and the output cap is Limits.max_output_tokens")
        return {k: v for k, v in fields.items() if v is not None}

    def describe(self) -> dict[str, Any]:
        """Settings worth logging (never the key)."""
        return {"backend": self.backend, "model": self.model_name, "base_url": self.base_url,
                **{k: v for k, v in self.options.items() if not _secret(k)}}

    @abc.abstractmethod
    def _make_sdk(self) -> Any:
        """A new SDK client with the SDK's retries off."""

    @abc.abstractmethod
    async def _attempt(self, sdk: Any, messages: list[Message], max_output_tokens: int,
                       timeout: float) -> ModelResponse:
        """One request, no retries; SDK errors translated to ModelCallError."""

    def _sdk(self) -> Any:
        # Lanes are made as calls come (about 20 ms each), so a run's first call does not wait for all of them.
        turn = next(self._next_lane)
        if len(self._lanes) < self._lane_count and turn >= len(self._lanes):
            self._lanes.append(self._make_sdk())
        return self._lanes[turn % len(self._lanes)]

    async def complete(
        self,
        messages: list[Message],
        *,
        max_output_tokens: int,
        timeout: float,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        on_retry: RetryHook | None = None,
    ) -> ModelResponse:
        """Call the model, retrying transient failures with backoff, never past ``deadline``.

        ``timeout`` bounds each attempt; ``deadline`` (a ``time.monotonic()`` value) bounds the
        whole call with its retries and waits.
        """
        retry = retry or RetryPolicy()
        attempt = 0
        while True:
            attempt += 1
            attempt_timeout = timeout
            if deadline is not None:
                attempt_timeout = min(timeout, deadline - time.monotonic())
                if attempt_timeout <= 0:
                    raise ModelTimeoutError(f"{self.model_name}: no time left in the run for another attempt",
                                            retryable=False, attempts=attempt - 1)
            try:
                response = await self._attempt(self._sdk(), messages, max_output_tokens, attempt_timeout)
            except ModelCallError as exc:
                exc.attempts = attempt
                retries_done = attempt - 1
                if not exc.retryable or retries_done >= retry.max_retries:
                    raise
                delay = retry.delay(retries_done, exc.retry_after)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise
                log.warning("model_retry", model=self.model_name, attempt=attempt, status=exc.status,
                            error=str(exc)[:200], delay_s=round(delay, 3))
                if on_retry is not None:
                    on_retry(attempt, exc, delay)
                await asyncio.sleep(delay)
                continue
            if attempt > 1:
                response = ModelResponse(response.text, response.input_tokens, response.output_tokens,
                                         response.finish_reason, attempt, response.usage_reported)
            return response

    async def aclose(self) -> None:
        lanes, self._lanes = self._lanes, []
        for sdk in lanes:
            try:
                await sdk.close()
            except Exception:  # closing is best effort
                pass


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every SDK client in the process.

    Each SDK client otherwise builds its own, loading the CA bundle again (about 50 ms apiece), which
    would dominate the start of a run with many lanes. Honours SSL_CERT_FILE / SSL_CERT_DIR.
    """
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _secret(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in ("key", "token", "secret", "password", "authorization"))


def translate_sdk_error(sdk_module: Any, exc: Exception, model: str) -> ModelCallError:
    """Map an openai/anthropic SDK exception to ModelCallError (both SDKs share these names)."""
    if isinstance(exc, sdk_module.APITimeoutError):
        return ModelTimeoutError(f"{model}: the provider did not answer in time", retryable=True)
    if isinstance(exc, sdk_module.APIConnectionError):
        return ModelCallError(f"{model}: could not reach the provider ({exc})", retryable=True)
    if isinstance(exc, sdk_module.APIStatusError):
        status = exc.status_code
        retry_after = None
        try:
            header = exc.response.headers.get("retry-after")
            retry_after = float(header) if header is not None else None
        except (TypeError, ValueError, AttributeError):
            retry_after = None
        retryable = status in (408, 409, 429) or status >= 500
        hint = ""
        if status == 401:
            hint = " (check the API key)"
        elif status == 404:
            hint = " (check the model name and base_url)"
        message = getattr(exc, "message", None) or str(exc)
        if status in (400, 413) and (getattr(exc, "code", None) in CONTEXT_WINDOW_CODES
                                     or _CONTEXT_WINDOW_WORDS.search(str(message))):
            return ContextWindowError(f"{model}: the request does not fit the model's context window "
                                      f"(HTTP {status}: {str(message)[:300]})", retryable=False, status=status)
        return ModelCallError(f"{model}: HTTP {status} from the provider{hint}: {str(message)[:500]}",
                              retryable=retryable, status=status, retry_after=retry_after)
    return ModelCallError(f"{model}: {exc.__class__.__name__}: {exc}", retryable=False)


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0
