"""The service's web pages: ``/ui`` (this tenant's runs) and ``/ui/runs/{id}`` (one run, live).

The pages are the same static shell for everyone: no tenant data and no authentication. The tenant's
API key is entered once on the page's sign-in form, kept in the browser's sessionStorage (gone when the
tab closes) and sent by the page's own ``fetch`` calls as ``Authorization: Bearer``; every run, event
and status comes from the JSON API, so what a key can see is exactly what the API lets it see. The
run's events are read with ``fetch`` and a streaming body (``EventSource`` cannot send the header),
resuming with ``Last-Event-ID`` after a dropped connection, and drawn by the run viewer's renderer.

Scripts and styles are files under ``/ui/static/``; the pages' Content-Security-Policy allows nothing
else (no inline script or style, no other origin), and the renderer puts every string in as text.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response

# Assets the pages load, by the name they have under /ui/static/: (package file, media type).
_ASSETS = {
    "view.js": ("view.js", "text/javascript; charset=utf-8"),
    "view.css": ("view.css", "text/css; charset=utf-8"),
    "service.js": ("service.js", "text/javascript; charset=utf-8"),
    "service.css": ("service.css", "text/css; charset=utf-8"),
}

CSP = "; ".join([
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
    "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
])
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}

_SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{title}</title>
<link rel="stylesheet" href="/ui/static/view.css">
<link rel="stylesheet" href="/ui/static/service.css">
</head>
<body data-page="{page}">
<div id="service-app"></div>
<script src="/ui/static/view.js"></script>
<script src="/ui/static/service.js"></script>
</body>
</html>
"""


@lru_cache(maxsize=None)
def _asset(name: str) -> bytes:
    return (resources.files("rlm.viewer") / "static" / name).read_bytes()


def _shell(page: str, title: str) -> HTMLResponse:
    return HTMLResponse(_SHELL.format(page=page, title=title),
                        headers={**_HEADERS, "Cache-Control": "no-store"})


def ui_router() -> APIRouter:
    """The pages and their assets (mounted by ``create_app``; none of them is in the OpenAPI schema)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/ui")
    async def runs_page() -> HTMLResponse:
        return _shell("runs", "Runs · rlm serve")

    @router.get("/ui/")
    async def runs_page_slash() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=308)

    @router.get("/ui/runs/{run_id}")
    async def run_page(run_id: str) -> HTMLResponse:
        # The same shell for any id: the page reads the id from its address and asks the API.
        return _shell("run", "Run · rlm serve")

    @router.get("/ui/static/{name}")
    async def static(name: str) -> Response:
        found = _ASSETS.get(name)
        if found is None:
            return Response("no such file", status_code=404, media_type="text/plain", headers=_HEADERS)
        file, media_type = found
        return Response(_asset(file), media_type=media_type,
                        headers={**_HEADERS, "Cache-Control": "public, max-age=300"})

    return router


def mount_ui(app: FastAPI) -> None:
    """Add the web pages to the service's app."""
    app.include_router(ui_router())
