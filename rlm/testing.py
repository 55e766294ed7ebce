"""A fake LLM server for tests and the offline demo.

It speaks the OpenAI chat-completions wire format (``POST /v1/chat/completions``) and the Anthropic
messages wire format (``POST /v1/messages``) on 127.0.0.1, so tests drive the official SDKs end to
end, through real HTTP, instead of patching them. Replies come from a *policy*: a callable from the
parsed request to a reply. Policies can script answers in order, route by model, simulate latency
and inject faults (429s, 5xx, a server that never answers).

The server runs its own event loop in a daemon thread, so it serves both synchronous code
(``RLM.completion``) and async tests, and its latency never blocks the caller's loop::

    with FakeLLMServer(Script(["```repl\\nprint(len(context))\\n```", "FINAL(42)"])) as server:
        rlm = RLM(backend="openai", backend_kwargs={"model_name": "fake", "base_url": server.openai_base_url,
                                                     "api_key": "test"})

Run it standalone (e.g. to give a benchmark a server in another process)::

    python -m rlm.testing --port 8765 --latency 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Union

Api = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class FakeRequest:
    """One request as the fake server understood it, normalized across both wire formats."""

    api: Api
    model: str
    system: str
    # [{"role": "user" | "assistant", "content": str}], text parts joined.
    messages: list[dict[str, str]]
    max_tokens: int | None
    number: int  # 1-based arrival order on this server
    body: dict[str, Any] = field(repr=False)

    @property
    def last_user(self) -> str:
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        return ""

    @property
    def text(self) -> str:
        """Everything the model was shown: system prompt and every message."""
        return "\n".join([self.system, *(m["content"] for m in self.messages)])

    @property
    def turn(self) -> int:
        """How many assistant replies precede this request (0 for the first call of a conversation)."""
        return sum(1 for m in self.messages if m["role"] == "assistant")


@dataclass(frozen=True)
class Reply:
    """What the fake model answers. A plain ``str`` from a policy means ``Reply(text=...)``."""

    text: str = ""
    status: int = 200
    # Seconds to wait before answering; None means the server's own latency.
    delay: float | None = None
    # Never answer (the connection stays open until the client gives up or the server stops).
    hang: bool = False
    # Token counts to report; None means estimated from the text (4 characters per token).
    input_tokens: int | None = None
    output_tokens: int | None = None
    # Retry-After header (seconds) sent with an error status.
    retry_after: float | None = None
    error: str | None = None
    # A whole error body to send as is (a provider's exact error shape).
    body: dict[str, Any] | None = None


PolicyResult = Union[Reply, str]
Policy = Callable[[FakeRequest], PolicyResult]


def echo(request: FakeRequest) -> Reply:
    """The default policy: repeat the last user message."""
    return Reply(text=f"echo: {request.last_user}")


class Script:
    """Replies in order, one per request; then ``then`` (a policy) or an error once exhausted.

    Items may be strings, Reply objects or policies (called with the request). Thread-safe: the server
    thread consumes it while a test may still be reading ``remaining``.
    """

    def __init__(self, replies: Iterable[PolicyResult | Policy], then: Policy | None = None) -> None:
        self._queue: collections.deque[PolicyResult | Policy] = collections.deque(replies)
        self._then = then
        self._lock = threading.Lock()

    def __call__(self, request: FakeRequest) -> PolicyResult:
        with self._lock:
            item = self._queue.popleft() if self._queue else None
        if item is None:
            if self._then is not None:
                return self._then(request)
            return Reply(status=500, error="fake model script exhausted: the test scripted too few replies")
        if callable(item):
            return item(request)
        return item

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._queue)


def by_model(policies: dict[str, Policy], default: Policy | None = None) -> Policy:
    """Route each request to a policy by its model name."""

    def route(request: FakeRequest) -> PolicyResult:
        policy = policies.get(request.model, default)
        if policy is None:
            return Reply(status=404, error=f"fake server has no policy for model {request.model!r}")
        return policy(request)

    return route


def is_rlm_root(request: FakeRequest) -> bool:
    """True when the request comes from an RLM loop (its system prompt teaches the REPL)."""
    return "llm_query" in request.system and "```repl" in request.system


def split(root: Policy, sub: Policy = echo) -> Policy:
    """Send requests from RLM loops (root and child RLMs) to ``root``, plain sub-calls to ``sub``."""

    def route(request: FakeRequest) -> PolicyResult:
        return root(request) if is_rlm_root(request) else sub(request)

    return route


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class FakeLLMServer:
    """An HTTP/1.1 server (keep-alive, Content-Length bodies) on 127.0.0.1 with a random port."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_requests: int = 1000,
        context_window: int | dict[str, int] | None = None,
    ) -> None:
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError("the fake server listens on loopback only")
        self.policy: Policy = policy or echo
        self.latency = latency
        # Tokens a request may take (input, 4 characters a token, plus its output cap), for every model
        # or by model name; a request over it gets the provider's "context length exceeded" answer.
        self.context_window = context_window
        self._host = host
        self._port = port
        # The last requests, for assertions; bounded so long benchmarks keep flat memory.
        self.requests: collections.deque[FakeRequest] = collections.deque(maxlen=keep_requests)
        self.request_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: collections.deque[Reply] = collections.deque()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "FakeLLMServer":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fake-llm-server", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError(f"fake LLM server failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(self._shutdown)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> "FakeLLMServer":
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake server is not started; call start() or use it as a context manager")
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for ``openai.AsyncOpenAI`` (the SDK appends ``/chat/completions``)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for ``anthropic.AsyncAnthropic`` (the SDK appends ``/v1/messages``)."""
        return self.url

    def base_url_for(self, backend: str) -> str:
        return self.anthropic_base_url if backend == "anthropic" else self.openai_base_url

    # -- fault injection -------------------------------------------------------------------------

    def inject(self, reply: Reply, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``reply`` before the policy sees any."""
        with self._lock:
            self._faults.extend([reply] * times)

    def fail_next(self, times: int = 1, status: int = 429, retry_after: float | None = None) -> None:
        self.inject(Reply(status=status, retry_after=retry_after), times)

    def hang_next(self, times: int = 1) -> None:
        self.inject(Reply(hang=True), times)

    def _overflow(self, request: FakeRequest) -> Reply | None:
        window = self.context_window
        if isinstance(window, dict):
            window = window.get(request.model)
        if window is None:
            return None
        return context_overflow(request.api, window, estimate_tokens(request.text), request.max_tokens or 0)

    # -- the server ------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._started.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self._host, self._port, backlog=1024)
        self._started.set()
        await self._stopping.wait()
        self._server.close()
        # Closing each connection ends its reader with EOF; hung requests return on `_stopping`.
        # Connection tasks are left to finish on their own: cancelling them makes asyncio log noise.
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, path, _ = lines[0].split(" ", 2)
                except ValueError:
                    await self._respond(writer, 400, {"error": {"message": "bad request line"}}, close=True)
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                try:
                    body = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                close = headers.get("connection", "").lower() == "close"
                status, payload, extra = await self._handle(method, path.split("?", 1)[0], body)
                if status == 0:  # hang: hold the connection until the server stops
                    await self._stopping.wait()  # type: ignore[union-attr]
                    return
                await self._respond(writer, status, payload, close=close, extra=extra)
                if close:
                    return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: dict[str, Any],
        *,
        close: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        reason = _REASONS.get(status, "Status")
        head = [
            f"HTTP/1.1 {status} {reason}",
            "content-type: application/json",
            f"content-length: {len(data)}",
            f"connection: {'close' if close else 'keep-alive'}",
        ]
        for name, value in (extra or {}).items():
            head.append(f"{name}: {value}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        try:
            await writer.drain()
        except ConnectionError:
            pass

    async def _handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method != "POST" or path not in ("/v1/chat/completions", "/chat/completions", "/v1/messages"):
            return 404, {"error": {"message": f"the fake server does not serve {method} {path}"}}, {}
        api: Api = "anthropic" if path == "/v1/messages" else "openai"
        try:
            request_body = json.loads(body)
            request = _parse(api, request_body, next(self._counter))
        except (ValueError, KeyError, TypeError) as exc:
            return 400, _error_body(api, 400, f"malformed request: {exc}"), {}
        with self._lock:
            self.request_count += 1
            self.requests.append(request)
            fault = self._faults.popleft() if self._faults else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            overflow = self._overflow(request)
            if fault is not None:
                reply = fault
            elif overflow is not None:
                reply = overflow
            else:
                try:
                    result = self.policy(request)
                except Exception as exc:  # a broken policy is a 500, visible to the test
                    result = Reply(status=500, error=f"fake policy raised {exc.__class__.__name__}: {exc}")
                reply = Reply(text=result) if isinstance(result, str) else result
            delay = self.latency if reply.delay is None else reply.delay
            if reply.hang:
                return 0, {}, {}
            if delay > 0:
                await asyncio.sleep(delay)
            if reply.body is not None:
                return reply.status, reply.body, {}
            if reply.status != 200:
                extra = {}
                if reply.retry_after is not None:
                    extra["retry-after"] = f"{reply.retry_after:g}"
                message = reply.error or _REASONS.get(reply.status, "error")
                return reply.status, _error_body(api, reply.status, message), extra
            input_tokens = reply.input_tokens if reply.input_tokens is not None else estimate_tokens(request.text)
            output_tokens = reply.output_tokens if reply.output_tokens is not None else estimate_tokens(reply.text)
            return 200, _ok_body(api, request, reply.text, input_tokens, output_tokens), {}
        finally:
            with self._lock:
                self.in_flight -= 1


def context_overflow(api: Api, window: int, input_tokens: int, max_tokens: int) -> Reply | None:
    """The provider's answer to a request over its context window (None when it fits), as each sends it."""
    if input_tokens + max_tokens <= window:
        return None
    if api == "openai":
        message = (f"This model's maximum context length is {window} tokens. However, you requested "
                   f"{input_tokens + max_tokens} tokens ({input_tokens} in the messages, {max_tokens} in the "
                   "completion). Please reduce the length of the messages or completion.")
        return Reply(status=400, body={"error": {"message": message, "type": "invalid_request_error",
                                                 "param": "messages", "code": "context_length_exceeded"}})
    if input_tokens > window:
        message = f"prompt is too long: {input_tokens} tokens > {window} maximum"
    else:
        message = (f"input length and `max_tokens` exceed context limit: {input_tokens} + {max_tokens} > "
                   f"{window}, decrease input length or `max_tokens` and try again")
    return Reply(status=400, body={"type": "error", "error": {"type": "invalid_request_error", "message": message}})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _parse(api: Api, body: dict[str, Any], number: int) -> FakeRequest:
    system_parts: list[str] = []
    messages: list[dict[str, str]] = []
    if api == "anthropic":
        system_parts.append(_text_of(body.get("system", "")))
        max_tokens = body["max_tokens"]
    else:
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    for message in body["messages"]:
        role = message["role"]
        text = _text_of(message.get("content", ""))
        if role in ("system", "developer"):
            system_parts.append(text)
        else:
            messages.append({"role": role, "content": text})
    return FakeRequest(
        api=api,
        model=str(body["model"]),
        system="\n".join(p for p in system_parts if p),
        messages=messages,
        max_tokens=max_tokens,
        number=number,
        body=body,
    )


def _ok_body(api: Api, request: FakeRequest, text: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    if api == "anthropic":
        return {
            "id": f"msg_fake{request.number}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
    return {
        "id": f"chatcmpl-fake{request.number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }


def _error_body(api: Api, status: int, message: str) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    if api == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlm.testing", description="Serve the fake LLM (echo policy).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args(argv)
    server = FakeLLMServer(latency=args.latency, port=args.port).start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
