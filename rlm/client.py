"""Python client of an ``rlm serve`` service (httpx), synchronous and async.

    from rlm.client import RLMServiceClient
    with RLMServiceClient("http://127.0.0.1:8080") as client:     # key from $RLM_SERVICE_KEY
        run = client.submit("Which city is mentioned most?", context=big_text)
        for event in client.events(run["id"]):                     # live, resumes after a dropped connection
            print(event.event, event.data.get("status"))
        run = client.wait(run["id"])
        print(run["status"], run["result"]["response"])

``AsyncRLMServiceClient`` has the same methods as coroutines (``events`` is an async iterator).
Every submit carries an ``Idempotency-Key`` (one is made when none is given), so a submit retried
after a dropped connection returns the same run instead of starting a second one.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

import httpx

__all__ = ["RLMServiceClient", "AsyncRLMServiceClient", "ServiceError", "ServiceEvent", "TERMINAL_STATUSES"]

KEY_ENV = "RLM_SERVICE_KEY"
ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("final", "max_iterations", "max_depth", "max_llm_calls", "max_tokens", "max_cost_usd",
                     "max_wall_s", "cell_timeout_s", "model_timeout_s", "error", "cancelled", "interrupted",
                     "rejected")
SUBMIT_ATTEMPTS = 3


class ServiceError(Exception):
    """The service refused a request: ``status`` (HTTP), ``code`` and ``message`` from its answer;
    ``retry_after`` (seconds) when it said when to try again."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after, self.body = status, code, message, retry_after, body


@dataclass(frozen=True)
class ServiceEvent:
    """One event of a run's stream: its number (for resuming), its name and its fields."""

    id: int
    event: str
    data: dict[str, Any]

    @property
    def terminal_status(self) -> str | None:
        """The run's final status when this event closes the stream, else None."""
        if self.event == "status" and self.data.get("status") not in ACTIVE_STATUSES:
            return self.data.get("status")
        return None


def _key(api_key: str | None, api_key_env: str) -> str:
    key = api_key or os.environ.get(api_key_env)
    if not key:
        raise ValueError(f"no API key: pass api_key= or set {api_key_env}")
    return key


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
    except ValueError:
        body, error = None, {}
    retry = response.headers.get("retry-after")
    raise ServiceError(response.status_code, str(error.get("code", "http_error")),
                       str(error.get("message", response.text[:500])),
                       float(retry) if retry and retry.replace(".", "", 1).isdigit() else None, body)


def _run_body(root_prompt: str, context: Any, context_id: str | None, model: str | None, sub_model: str | None,
              sandbox: dict[str, Any] | None, limits: dict[str, Any] | None, tools: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"root_prompt": root_prompt}
    if context_id is not None:
        body["context_id"] = context_id
    else:
        body["context"] = "" if context is None else context
    for name, value in (("model", model), ("sub_model", sub_model), ("sandbox", sandbox), ("limits", limits),
                        ("tools", tools)):
        if value:
            body[name] = value
    return body


def _upload(data: str | bytes | list[Any] | dict[str, Any], kind: str | None) -> tuple[bytes, str]:
    if isinstance(data, (list, dict)):
        return json.dumps(data).encode("utf-8"), "json"
    if isinstance(data, str):
        return data.encode("utf-8"), kind or "text"
    return data, kind or "text"


class _SSEParser:
    """Server-Sent Events from lines (the subset the service sends: id, event, data, comments)."""

    def __init__(self) -> None:
        self.last_id = 0
        self._id: int | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> ServiceEvent | None:
        if line == "":
            if not self._data:
                return None
            data = json.loads("\n".join(self._data))
            event = ServiceEvent(self._id if self._id is not None else self.last_id, self._event, data)
            if self._id is not None:
                self.last_id = self._id
            self._id, self._event, self._data = None, "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id" and value.isdigit():
            self._id = int(value)
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


class RLMServiceClient:
    """Blocking client. ``transport`` is passed to httpx (tests use it to reach an app in process)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, api_key_env: str = KEY_ENV,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {_key(api_key, api_key_env)}"})

    def __enter__(self) -> "RLMServiceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    def upload_context(self, data: str | bytes | list[Any] | dict[str, Any], kind: str | None = None) -> dict[str, Any]:
        """Upload a context once, then start runs on it with ``submit(..., context_id=...)``."""
        content, kind = _upload(data, kind)
        return self._json("POST", "/v1/contexts", params={"kind": kind}, content=content)

    def submit(self, root_prompt: str, context: Any = None, *, context_id: str | None = None,
               model: str | None = None, sub_model: str | None = None, sandbox: dict[str, Any] | None = None,
               limits: dict[str, Any] | None = None, tools: list[str] | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Start a run; returns the run (status ``queued``). Retried on dropped connections."""
        body = _run_body(root_prompt, context, context_id, model, sub_model, sandbox, limits, tools)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(SUBMIT_ATTEMPTS):
            try:
                return self._json("POST", "/v1/runs", json=body, headers=headers)
            except httpx.TransportError:
                if attempt == SUBMIT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def get(self, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/runs/{run_id}")

    def list(self, status: str | None = None, *, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._json("GET", "/v1/runs", params=params)

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/runs/{run_id}/cancel")

    def usage(self, days: int = 31) -> dict[str, Any]:
        return self._json("GET", "/v1/usage", params={"days": days})

    def events(self, run_id: str, *, last_event_id: int = 0, reconnect: bool = True) -> Iterator[ServiceEvent]:
        """The run's events from after ``last_event_id``, until it ends; a dropped connection is
        resumed with Last-Event-ID (no event lost or repeated)."""
        parser = _SSEParser()
        parser.last_id = last_event_id
        while True:
            try:
                with self._http.stream("GET", f"/v1/runs/{run_id}/events", timeout=httpx.Timeout(60.0, read=None),
                                       headers={"Last-Event-ID": str(parser.last_id)}) as response:
                    if response.status_code >= 400:
                        response.read()
                        _raise_for(response)
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield event
                            if event.terminal_status is not None:
                                return
                return  # the server ended the stream: the run is over (or the server is stopping)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                if not reconnect:
                    raise
                time.sleep(0.5)

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run ends; returns it. Raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get(run_id)
            if run["status"] not in ACTIVE_STATUSES:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout} s")
            for event in self.events(run_id, reconnect=False):
                if event.terminal_status is not None:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break


class AsyncRLMServiceClient:
    """The same client for asyncio code."""

    def __init__(self, base_url: str, api_key: str | None = None, *, api_key_env: str = KEY_ENV,
                 timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                       headers={"Authorization": f"Bearer {_key(api_key, api_key_env)}"})

    async def __aenter__(self) -> "AsyncRLMServiceClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    async def upload_context(self, data: str | bytes | list[Any] | dict[str, Any],
                             kind: str | None = None) -> dict[str, Any]:
        content, kind = _upload(data, kind)
        return await self._json("POST", "/v1/contexts", params={"kind": kind}, content=content)

    async def submit(self, root_prompt: str, context: Any = None, *, context_id: str | None = None,
                     model: str | None = None, sub_model: str | None = None, sandbox: dict[str, Any] | None = None,
                     limits: dict[str, Any] | None = None, tools: list[str] | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        body = _run_body(root_prompt, context, context_id, model, sub_model, sandbox, limits, tools)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(SUBMIT_ATTEMPTS):
            try:
                return await self._json("POST", "/v1/runs", json=body, headers=headers)
            except httpx.TransportError:
                if attempt == SUBMIT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def get(self, run_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/runs/{run_id}")

    async def list(self, status: str | None = None, *, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return await self._json("GET", "/v1/runs", params=params)

    async def cancel(self, run_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/v1/runs/{run_id}/cancel")

    async def usage(self, days: int = 31) -> dict[str, Any]:
        return await self._json("GET", "/v1/usage", params={"days": days})

    async def events(self, run_id: str, *, last_event_id: int = 0,
                     reconnect: bool = True) -> AsyncIterator[ServiceEvent]:
        import asyncio

        parser = _SSEParser()
        parser.last_id = last_event_id
        while True:
            try:
                async with self._http.stream("GET", f"/v1/runs/{run_id}/events",
                                             timeout=httpx.Timeout(60.0, read=None),
                                             headers={"Last-Event-ID": str(parser.last_id)}) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _raise_for(response)
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield event
                            if event.terminal_status is not None:
                                return
                return
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                if not reconnect:
                    raise
                await asyncio.sleep(0.5)

    async def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        import asyncio

        async def follow() -> dict[str, Any]:
            while True:
                run = await self.get(run_id)
                if run["status"] not in ACTIVE_STATUSES:
                    return run
                async for event in self.events(run_id, reconnect=False):
                    if event.terminal_status is not None:
                        break

        return await asyncio.wait_for(follow(), timeout)


# -- `rlm run --server URL` ------------------------------------------------------------------------


def run_on_server(args: Any, context: Any, defaults: Any) -> int:
    """``rlm run`` against a service: same output and exit codes as a local run. Only what was given
    on the command line (what differs from ``defaults``, the options' default values) is asked for;
    the tenant's policy decides the rest."""

    def given(name: str) -> Any:
        value = getattr(args, name)
        return value if value != getattr(defaults, name) else None

    limits = {name: given(name) for name in ("max_depth", "max_iterations", "max_wall_s", "cell_timeout_s",
                                             "max_llm_calls", "max_tokens", "max_cost_usd")}
    sandbox = {"backend": given("sandbox")}
    try:
        client = RLMServiceClient(args.server, api_key_env=args.api_key_env)
    except ValueError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return 1
    with client:
        try:
            run = client.submit(args.question, context, model=args.model, sub_model=args.sub_model,
                                sandbox={k: v for k, v in sandbox.items() if v is not None} or None,
                                limits={k: v for k, v in limits.items() if v is not None} or None)
            if not args.quiet:
                print(f"run {run['id']} accepted by {args.server}", file=sys.stderr)
            started = time.monotonic()
            for event in client.events(run["id"]):
                if not args.quiet and event.event in ("iteration", "cell", "status", "rlm_start", "rlm_end"):
                    detail = event.data.get("status") or event.data.get("iteration") or ""
                    print(f"[{time.monotonic() - started:7.2f}s] {event.event} {detail}", file=sys.stderr)
            run = client.wait(run["id"])
        except ServiceError as exc:
            print(f"rlm: the service refused: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            client.cancel(run["id"])
            print(f"rlm: interrupted; run {run['id']} cancelled", file=sys.stderr)
            return 130
    result = run.get("result") or {}
    print(f"status: {run['status']}" + (f" ({result['message']})" if result.get("message") else ""), file=sys.stderr)
    for model, usage in (result.get("usage") or {}).items():
        print(f"  {model}: {usage['calls']} calls, {usage['input_tokens']:,} in / {usage['output_tokens']:,} out "
              f"tokens, ${usage['cost_usd']:.4f}", file=sys.stderr)
    if result.get("response") is not None:
        print(result["response"])
    return 0 if run["status"] == "final" else (1 if run["status"] in ("error", "rejected") else 2)
