"""The HTTP API of ``rlm serve`` (FastAPI; OpenAPI schema at /openapi.json, docs at /docs).

    POST /v1/contexts                 upload a context (streamed to disk, hashed); returns its id
    POST /v1/runs                     start a run (202 + run); Idempotency-Key makes retries safe
    GET  /v1/runs                     this tenant's runs, newest first (status filter, cursor)
    GET  /v1/runs/{id}                one run
    POST /v1/runs/{id}/cancel         stop it (its model calls stop, its boxes are destroyed)
    GET  /v1/runs/{id}/events         its events as Server-Sent Events (Last-Event-ID resumes)
    GET  /v1/usage                    this tenant's calls, tokens and dollars by day and model
    GET  /healthz, /readyz, /metrics  operations
    GET  /ui, /ui/runs/{id}           web pages: the runs, one run live (rlm.service.ui)

Every /v1 request authenticates with ``Authorization: Bearer KEY`` and sees only its own tenant's
runs and contexts: anything else is 404, exactly as if it did not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator, Literal

import structlog
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlm.service import auth
from rlm.service.body_limits import BodyLimits
from rlm.service.config import Config
from rlm.service.metrics import CONTENT_TYPE_LATEST, Metrics
from rlm.service.models import Context, Run, Tenant
from rlm.service.policy import Policy, PolicyViolation, resolve
from rlm.service.runner import rlm_supports_custom_tools
from rlm.service.runs import QueueFull, RunManager
from rlm.service.sse import run_events
from rlm.service.store import QuotaExhausted, Store, new_id, utc_day
from rlm.service.ui import mount_ui

log = structlog.get_logger("rlm.service")

_RUN_ID = re.compile(r"^run_[0-9a-f]{24}$")
_CONTEXT_ID = re.compile(r"^ctx_[0-9a-f]{24}$")
# Request fields that would point the server at another provider or account: refused by name.
_PROVIDER_FIELDS = ("base_url", "api_key", "api_base", "endpoint", "url", "key", "headers", "backend_kwargs",
                    "organization", "project")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", ...}}`` with its status."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra


def _not_found(what: str = "run") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


# -- request bodies ------------------------------------------------------------------------------


class SandboxRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["local", "docker", "modal", "e2b"] | None = None
    runtime: Literal["runc", "runsc"] | None = None
    memory_mb: int | None = Field(None, gt=0)
    cpus: float | None = Field(None, gt=0)


class LimitsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cell_timeout_s: float | None = Field(None, gt=0)
    max_depth: int | None = Field(None, ge=0)
    max_iterations: int | None = Field(None, gt=0)
    max_wall_s: float | None = Field(None, gt=0)
    max_llm_calls: int | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, gt=0)


class RunRequest(BaseModel):
    """A run: the question, the context (inline, or an uploaded context's id), and optional choices
    within the tenant's policy. Unknown fields are refused (no base URL or key can be slipped in)."""

    model_config = ConfigDict(extra="forbid")
    root_prompt: str = Field(min_length=1, max_length=200_000)
    context: str | list[Any] | dict[str, Any] | None = None
    context_id: str | None = Field(None, max_length=40)
    model: str | None = Field(None, max_length=200)
    sub_model: str | None = Field(None, max_length=200)
    tools: list[str] = Field(default_factory=list, max_length=50)
    sandbox: SandboxRequest | None = None
    limits: LimitsRequest | None = None


def run_view(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "settings": run.settings,
        "context_id": run.context_id,
        "result": run.result,
    }


def create_app(config: Config, *, database_url: str | None = None) -> FastAPI:
    """The ASGI app. The store, the scheduler and the runs live for the app's lifespan."""
    server = config.server
    url = database_url or server.database_url
    metrics = Metrics()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(url)
        await store.migrate()
        manager = RunManager(store, config, metrics)
        app.state.store, app.state.manager = store, manager
        state["store"], state["manager"] = store, manager
        await manager.recover()
        watcher = asyncio.create_task(manager.watch_tenants(), name="tenant-watcher")
        log.info("service_ready", database=store.engine.url.render_as_string(hide_password=True))
        try:
            yield
        finally:
            watcher.cancel()
            await manager.shutdown(server.shutdown_grace_s)
            await store.close()
            log.info("service_stopped")

    app = FastAPI(title="rlm serve", version="1", lifespan=lifespan, redirect_slashes=False,
                  description="Recursive Language Model runs for many tenants, in secure sandboxes.")
    app.add_middleware(BodyLimits, max_bytes=server.max_request_bytes, timeout_s=server.body_timeout_s,
                       overrides={"/v1/contexts": server.max_upload_bytes})
    app.state.stopping = False

    def store() -> Store:
        return state["store"]

    def manager() -> RunManager:
        return state["manager"]

    # -- errors -----------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message, **exc.extra}},
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        refused = [str(e["loc"][-1]) for e in errors
                   if e.get("type") == "extra_forbidden" and str(e["loc"][-1]).lower() in _PROVIDER_FIELDS]
        if refused:
            message = (f"a request cannot set {', '.join(refused)}: model providers, their URLs and keys "
                       "come from the server's configuration; choose a model by name")
        else:
            message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:10])
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors[:20]]
        return JSONResponse({"error": {"code": "invalid_request", "message": message, "details": details}},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    # -- authentication ---------------------------------------------------------------------

    async def tenant(authorization: str | None = Header(None)) -> Tenant:
        token = auth.bearer_token(authorization)
        challenge = {"WWW-Authenticate": "Bearer"}
        if token is None:
            raise ApiError(401, "unauthenticated", "send your API key as 'Authorization: Bearer KEY'",
                           headers=challenge)
        key_id = auth.key_id_of(token)
        found = await store().tenant_by_key_id(key_id) if key_id else None
        # Compare even when nothing was found, so a wrong key id costs the same as a wrong secret.
        if not auth.key_matches(token, found.key_hash if found else "0" * 64) or found is None:
            raise ApiError(401, "unauthenticated", "the API key is not valid", headers=challenge)
        if found.disabled:
            raise ApiError(403, "tenant_disabled", "this tenant is disabled; ask the operator")
        structlog.contextvars.bind_contextvars(tenant_id=found.id)
        manager().tenant_seen(found)
        return found

    # -- contexts ---------------------------------------------------------------------------

    @app.post("/v1/contexts", status_code=201, summary="Upload a context (streamed to disk)")
    async def upload_context(request: Request, kind: Literal["text", "json"] = Query("text"),
                             who: Tenant = Depends(tenant)) -> dict[str, Any]:
        folder = Path(server.data_dir) / "contexts" / who.id
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        context_id = new_id("ctx")
        path = folder / context_id
        digest, size = hashlib.sha256(), 0
        try:
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            if kind == "json":
                await asyncio.to_thread(_check_json, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        record = Context(id=context_id, tenant_id=who.id, kind=kind, size=size, sha256=digest.hexdigest(),
                         path=str(path), created_at=time.time())
        await store().add_context(record)
        return {"id": context_id, "kind": kind, "size": size, "sha256": record.sha256}

    # -- runs -------------------------------------------------------------------------------

    @app.post("/v1/runs", status_code=202, summary="Start a run")
    async def create_run(body: RunRequest, response: Response, who: Tenant = Depends(tenant),
                         idempotency_key: str | None = Header(None, max_length=200)) -> dict[str, Any]:
        policy = Policy.from_dict(who.policy)
        if (body.context is None) == (body.context_id is None):
            raise ApiError(422, "invalid_request", "give exactly one of context (inline) and context_id (uploaded)")
        if body.context_id is not None:
            if not _CONTEXT_ID.match(body.context_id) or await store().get_context(who.id, body.context_id) is None:
                raise _not_found("context")
        offered = [b for b in policy.backends if b in server.backends]
        try:
            if body.sandbox and body.sandbox.backend and body.sandbox.backend not in server.backends:
                raise PolicyViolation("backends", f"this server does not offer the {body.sandbox.backend!r} "
                                                  f"sandbox backend; it offers {', '.join(server.backends)}")
            if not offered:
                raise PolicyViolation("backends", "none of this tenant's sandbox backends is offered by the server")
            settings = resolve(policy.replace(backends=tuple(offered)), body.model_dump(exclude_none=True),
                               models=list(config.models), default_model=config.default_model,
                               default_sub_model=config.default_sub_model, tools=list(config.tools),
                               tools_supported=rlm_supports_custom_tools())
        except PolicyViolation as exc:
            raise ApiError(403, "policy_violation", str(exc), limit=exc.limit) from None
        try:
            run, created = await manager().submit(who, policy, root_prompt=body.root_prompt, settings=settings,
                                                  context=body.context, context_id=body.context_id,
                                                  idempotency_key=idempotency_key)
        except QueueFull as exc:
            raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        except QuotaExhausted as exc:
            retry = max(1, int(exc.resets_at - time.time()))
            raise ApiError(429, "daily_quota_exhausted", str(exc), resets_at=exc.resets_at,
                           headers={"Retry-After": str(retry)}) from None
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return run_view(run)

    @app.get("/v1/runs", summary="This tenant's runs, newest first")
    async def list_runs(status: str | None = Query(None, max_length=20), cursor: str | None = Query(None),
                        limit: int = Query(50, ge=1, le=500), who: Tenant = Depends(tenant)) -> dict[str, Any]:
        before = None
        if cursor is not None:
            if not cursor.isdigit():
                raise ApiError(422, "invalid_request", "cursor must be a value returned as next_cursor")
            before = int(cursor)
        runs = await store().list_runs(who.id, status=status, before=before, limit=limit)
        next_cursor = str(runs[-1].seq) if len(runs) == limit else None
        return {"runs": [run_view(r) for r in runs], "next_cursor": next_cursor}

    async def own_run(run_id: str, who: Tenant) -> Run:
        if not _RUN_ID.match(run_id):
            raise _not_found()
        run = await store().get_run(who.id, run_id)
        if run is None:
            raise _not_found()
        return run

    @app.get("/v1/runs/{run_id}", summary="One run")
    async def get_run(run_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        return run_view(await own_run(run_id, who))

    @app.post("/v1/runs/{run_id}/cancel", summary="Cancel a run")
    async def cancel_run(run_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        run = await own_run(run_id, who)
        if run.status in ("queued", "running"):
            await store().audit("run_cancel", actor=f"tenant:{who.name}", tenant_id=who.id, detail={"run_id": run.id})
            log.info("audit", action="run_cancel", tenant_id=who.id, run_id=run.id)
            await manager().cancel(run, "cancelled by the tenant")
            run = await own_run(run_id, who)
        return run_view(run)

    @app.get("/v1/runs/{run_id}/events", summary="The run's events as Server-Sent Events")
    async def events(run_id: str, request: Request, who: Tenant = Depends(tenant),
                     last_event_id: str | None = Header(None, max_length=20)) -> StreamingResponse:
        await own_run(run_id, who)
        after = request.query_params.get("last_event_id", last_event_id) or "0"
        if not after.isdigit():
            raise ApiError(422, "invalid_request", "Last-Event-ID must be an event id from this stream")

        async def status() -> str | None:
            run = await store().get_run(who.id, run_id)
            return run.status if run else None

        body = run_events(store(), manager().hub, who.id, run_id, int(after),
                          stopping=lambda: bool(app.state.stopping), run_status=status)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/v1/usage", summary="This tenant's usage by day and model")
    async def usage(days: int = Query(31, ge=1, le=366), who: Tenant = Depends(tenant)) -> dict[str, Any]:
        since = utc_day(time.time() - (days - 1) * 86400)
        rows = await store().usage(who.id, since_day=since)
        policy = Policy.from_dict(who.policy)
        today = await store().quota_day(who.id, utc_day())
        return {
            "usage": [{"day": r.day, "model": r.model, "calls": r.calls, "input_tokens": r.input_tokens,
                       "output_tokens": r.output_tokens, "cost_usd": round(r.cost_usd, 8)} for r in rows],
            "today": {
                "day": utc_day(),
                "spent_usd": round(today.spent_usd, 8) if today else 0.0,
                "spent_tokens": today.spent_tokens if today else 0,
                "reserved_usd": round(max(today.reserved_usd, 0.0), 8) if today else 0.0,
                "reserved_tokens": max(today.reserved_tokens, 0) if today else 0,
                "daily_usd": policy.daily_usd,
                "daily_tokens": policy.daily_tokens,
            },
        }

    # -- operations -------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await store().ping()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unreachable: {exc.__class__.__name__}"
        for backend in server.backends:
            checks[f"sandbox:{backend}"] = await asyncio.to_thread(_backend_check, backend)
        ready = all(v == "ok" for v in checks.values()) and not app.state.stopping
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(authorization: str | None = Header(None)) -> Response:
        if server.metrics_token_env:
            expected = os.environ.get(server.metrics_token_env, "")
            token = auth.bearer_token(authorization) or ""
            if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
                raise ApiError(401, "unauthenticated", "metrics need 'Authorization: Bearer <metrics token>'")
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    mount_ui(app)
    return app


def _check_json(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            value = json.load(f)
    except ValueError as exc:
        raise ApiError(422, "invalid_context", f"the upload is not valid JSON ({exc}); upload it with kind=text") from None
    if not isinstance(value, (list, dict, str)):
        raise ApiError(422, "invalid_context", "a JSON context must be a list, an object or a string")


def _backend_check(backend: str) -> str:
    """Whether a sandbox backend can create boxes (cheap checks, no box started)."""
    if backend == "local":
        return "ok"
    if backend == "docker":
        try:
            from sandboxes.backends.docker.engine import engine_client

            engine_client().ping()
            return "ok"
        except Exception as exc:
            return f"unreachable: {str(exc)[:200]}"
    return "ok"  # modal / e2b: reachable only through their SDKs at box start
