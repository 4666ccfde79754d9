"""The dashboard's web application (Starlette): pages, JSON and the report's chart.

    GET /                          the runs (the page refreshes its table from /api/runs)
    GET /runs/RUN_ID               one run, live (refreshes from /api/runs/RUN_ID)
    GET /runs/RUN_ID/failures      every failed item of the run
    GET /runs/RUN_ID/timeline.png  stepmap report's figure: tasks per worker + durations
    GET /api/runs, /api/runs/RUN_ID
    GET /static/...                the page's own CSS and JavaScript (no CDN)

Safe by default: only GET and HEAD are routed (nothing changes a run); every string from a
run reaches the page through Jinja2's autoescaping or the script's ``textContent``; the
Content-Security-Policy allows scripts, styles and images from this server only (no inline
script runs, even if one got into the page); run ids are checked by ``results.check_run_id``
before they name anything, and static files are served by Starlette's StaticFiles, which
refuses paths outside its directory; the Host header must name this server (no DNS
rebinding).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ResultsError, UsageError
from ..report import draw, title_for
from ..results import check_run_id
from .model import FAILURES_ON_PAGE, RunsReader

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
#: The page polls at this interval (milliseconds); the server caches what it can.
POLL_MS = 1000


class SecurityHeaders:
    """ASGI middleware: the headers above on every response, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in SECURITY_HEADERS if h[0] not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(reader: RunsReader, *, allowed_hosts: list[str] | None = None,
               one_run: str | None = None) -> Starlette:
    """The application over ``reader``; ``one_run`` sends / to that run's page."""
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                   autoescape=True, undefined=jinja2.StrictUndefined)
    templates.filters["duration"] = format_duration
    charts = ChartCache(reader)

    def page(name: str, status_code: int = 200, **context) -> HTMLResponse:
        html = templates.get_template(name).render(location=reader.location, poll_ms=POLL_MS,
                                                   **context)
        return HTMLResponse(html, status_code=status_code,
                            headers={"cache-control": "no-store"})

    async def index(request: Request):
        if one_run:
            return RedirectResponse(f"/runs/{one_run}", status_code=303)
        return page("index.html", rows=await _threaded(_rows, reader))

    async def run_page(request: Request):
        run_id = request.path_params["run_id"]
        try:
            detail = await _threaded(_detail, reader, run_id)
        except HTTPException as exc:
            if exc.status_code != 404 or not _valid(run_id):
                raise
            # not started yet (e.g. the URL `run --dashboard` prints): wait for it
            return page("waiting.html", status_code=404, run_id=run_id, message=exc.detail)
        return page("run.html", run=detail, failures=detail["failures"][:FAILURES_ON_PAGE])

    async def failures_page(request: Request):
        detail = await _threaded(_detail, reader, request.path_params["run_id"])
        return page("failures.html", run=detail, failures=detail["failures"])

    async def timeline(request: Request):
        png = await _threaded(charts.png, request.path_params["run_id"])
        return Response(png, media_type="image/png", headers={"cache-control": "no-store"})

    async def api_runs(request: Request):
        return JSONResponse(await _threaded(_rows, reader), headers={"cache-control": "no-store"})

    async def api_run(request: Request):
        detail = await _threaded(_detail, reader, request.path_params["run_id"])
        return JSONResponse(detail, headers={"cache-control": "no-store"})

    async def not_found(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # registered for HTTPException only
            raise exc
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return page("error.html", status_code=exc.status_code, message=exc.detail)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/runs/{run_id}", run_page, methods=["GET"]),
        Route("/runs/{run_id}/failures", failures_page, methods=["GET"]),
        Route("/runs/{run_id}/timeline.png", timeline, methods=["GET"]),
        Route("/api/runs", api_runs, methods=["GET"]),
        Route("/api/runs/{run_id}", api_run, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders),
                  Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: not_found})


def _valid(run_id: str) -> bool:
    try:
        check_run_id(run_id)
    except UsageError:
        return False
    return True


def _rows(reader: RunsReader) -> list[dict]:
    try:
        return reader.rows()
    except ResultsError as exc:  # e.g. s3:// without credentials: say so, keep serving
        raise HTTPException(503, f"cannot list the runs in {reader.location}: {exc}") from None


def _detail(reader: RunsReader, run_id: str) -> dict:
    try:
        return reader.detail(run_id)
    except UsageError as exc:  # unknown or unsafe run id
        raise HTTPException(404, str(exc)) from None
    except ResultsError as exc:
        raise HTTPException(500, f"cannot read run {run_id}: {exc}") from None


async def _threaded(function, *args):
    """Storage and matplotlib block: run them on Starlette's thread pool."""
    from starlette.concurrency import run_in_threadpool
    return await run_in_threadpool(function, *args)


class ChartCache:
    """One rendering of the report's figure per run and version of its results (matplotlib
    is slow and not thread-safe: renderings take turns)."""

    def __init__(self, reader: RunsReader):
        self.reader = reader
        self._cache: dict[str, tuple[str, bytes]] = {}
        self._lock = threading.Lock()

    def png(self, run_id: str) -> bytes:
        try:
            record, summary, tasks, version = self.reader.chart_inputs(run_id)
        except UsageError as exc:
            raise HTTPException(404, str(exc)) from None
        if not tasks:
            raise HTTPException(404, f"run {run_id} has no finished tasks yet")
        with self._lock:
            cached = self._cache.get(run_id)
            if cached is None or cached[0] != version:
                buffer = io.BytesIO()
                draw(buffer, summary, tasks, title_for(summary, record))
                cached = self._cache[run_id] = (version, buffer.getvalue())
        return cached[1]


def format_duration(seconds) -> str:
    """1.234 s, 12 min 5 s, 2 h 03 min; '-' for unknown."""
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
