"""What the console and the gateway share: the application factory, `/healthz`, `/metrics`,
`/openapi.json`, errors as one line (never a traceback), security headers, and serving on
uvicorn (127.0.0.1 by default).

Errors, one table for both servers (`STATUS_OF`): a `LineageGuardError` becomes its status with
its one-line message (an error class may name its own `http_status`, e.g. the gateway's 413,
415 and 422); the lineage store unreachable is 503 with `Retry-After`; a malformed
request 400 with one line; anything else 500 with one line (the traceback goes to stderr's log,
never to the client). The API answers with problem details (RFC 9457), a browser (an `Accept:
text/html` request to an app with an `error_page`) with a plain page.
"""

from __future__ import annotations

import gc
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lineage_guard.lineage.accounts import AccountStore
from lineage_guard.lineage.errors import (
    ConfigError,
    CorruptLineageError,
    LineageGuardError,
    ServiceUnavailableError,
    UnusableInputError,
)
from lineage_guard.web.access import Permission, require, signed_in
from lineage_guard.web.auth import Authenticator, AuthSettings, Principal

log = logging.getLogger(__name__)

VERSION = "0.1.0"
RETRY_AFTER_S = 5
# Status per error class (the most specific class wins).
STATUS_OF: dict[type[LineageGuardError], int] = {
    ServiceUnavailableError: 503,
    UnusableInputError: 400,
    ConfigError: 500,
    CorruptLineageError: 500,
    LineageGuardError: 500,
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
ANONYMOUS_PATHS = frozenset({"/healthz"})

# (request, status, one-line message) -> a page, for browsers
ErrorPage = Callable[[Request, int, str], Response]


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram


def _metrics() -> Metrics:
    registry = CollectorRegistry()
    return Metrics(
        registry=registry,
        requests=Counter(
            "lineage_guard_http_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "lineage_guard_http_request_seconds",
            "Time to answer an HTTP request, by route.",
            ["method", "route"],
            registry=registry,
        ),
    )


def create_app(
    *,
    title: str,
    store: AccountStore,
    auth: AuthSettings,
    routers: Sequence[APIRouter] = (),
    ready: Callable[[], Any] | None = None,
    error_page: ErrorPage | None = None,
    signin_path: str | None = None,
    description: str = "",
) -> FastAPI:
    """The FastAPI app of one server: `routers` (every route with `access.require`), plus the
    shared routes. `ready` is called by `/healthz` (raise `ServiceUnavailableError` when the
    store is down); `error_page` renders errors for browsers, which an unauthenticated page
    request sends to `signin_path`."""
    app = FastAPI(
        title=title,
        version=VERSION,
        description=description,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.store = store
    app.state.authenticator = Authenticator(store, auth)
    app.state.metrics = metrics = _metrics()

    @app.get("/healthz", tags=["service"], summary="Liveness and store reachability (anonymous)")
    async def healthz() -> dict[str, str]:
        if ready is not None:
            await run_in_threadpool(ready)
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=Response)
    def prometheus(_: Annotated[Principal, require(Permission.METRICS_READ)]) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", tags=["service"], summary="This API's OpenAPI 3.1 document")
    def openapi(_: Annotated[Principal, signed_in()]) -> dict[str, Any]:
        return app.openapi()

    for router in routers:
        app.include_router(router)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    _install_errors(app, error_page, signin_path)

    app.add_middleware(_MeasureAndProtect, metrics=metrics, error_page=error_page)
    return app


class _MeasureAndProtect:
    """Every answer: counted and timed by route for `/metrics`, with the security headers and
    `Cache-Control: no-store` (static files aside); a bug becomes one line to the client and
    its traceback goes to the log. A plain ASGI middleware: Starlette's `BaseHTTPMiddleware`
    costs a task group and memory streams per request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, error_page: ErrorPage | None) -> None:
        self.app, self.metrics, self.error_page = app, metrics, error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        cache = not scope["path"].startswith("/static/")
        status = 0

        async def protected(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if cache:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, protected)
        except Exception as exc:  # a bug: one line to the client, the traceback to the log
            log.error("%s %s failed: %s", scope["method"], scope["path"], exc, exc_info=exc)
            if status:  # the answer had begun: nothing more can be said on it
                raise
            request = Request(scope, receive)
            detail = "Internal error: see the server's log."
            await _error(request, 500, detail, self.error_page)(scope, receive, protected)
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(scope["method"], route, str(status)).inc()
        self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)


# -- errors -----------------------------------------------------------------------------------


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An RFC 9457 problem details response."""
    return JSONResponse(
        {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status,
         "detail": detail},
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )  # fmt: skip


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _error(
    request: Request,
    status: int,
    detail: str,
    error_page: ErrorPage | None,
    headers: dict[str, str] | None = None,
) -> Response:
    if error_page is not None and wants_html(request):
        response = error_page(request, status, detail)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response
    return problem(status, detail, headers)


def _install_errors(app: FastAPI, error_page: ErrorPage | None, signin_path: str | None) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if (
            exc.status_code == 401
            and signin_path
            and wants_html(request)
            and request.method == "GET"
        ):
            return RedirectResponse(f"{signin_path}?next={request.url.path}", status_code=303)
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        return _error(request, exc.status_code, detail, error_page, dict(exc.headers or {}))

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(request, 400, validation_line(exc), error_page)

    async def our_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LineageGuardError)
        status = getattr(exc, "http_status", None) or next(
            s for cls, s in STATUS_OF.items() if isinstance(exc, cls)
        )
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return _error(request, status, exc.message, error_page, headers)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(LineageGuardError, our_error)


def validation_line(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: the first, with where it was."""
    errors = exc.errors()
    if not errors:
        return "Malformed request."
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = str(first.get("msg", "invalid")).replace("\n", " ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"Bad `{where}`: {message}{more}."


# -- OpenAPI ----------------------------------------------------------------------------------

_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}
_ERROR_RESPONSES = {
    "400": "Malformed request (one line)",
    "401": "No or bad credentials",
    "403": "Not allowed for this role, scope or tenant",
    "429": "Too many requests",
    "500": "Internal error (one line)",
    "503": "The lineage store is unavailable; retry after `Retry-After` seconds",
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document (OpenAPI 3.1), with the errors every route may answer: problem
    details instead of FastAPI's 422."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = _PROBLEM_SCHEMA
    for schema in ("HTTPValidationError", "ValidationError"):
        components.pop(schema, None)
    ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, text in _ERROR_RESPONSES.items():
                if path in ANONYMOUS_PATHS and status not in ("500", "503"):
                    continue
                responses.setdefault(status, {"description": text, "content": ref})
    app.openapi_schema = doc
    return doc


# -- serving ----------------------------------------------------------------------------------


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve `app` until interrupted. A port that cannot be bound is one line (exit 3)."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot listen on `{host}:{port}`: {exc.strerror or exc}. Choose another `--port`"
            " or `--host`."
        ) from None
    config = uvicorn.Config(
        app, log_level="warning", server_header=False, date_header=False, access_log=False
    )
    # What start-up made (modules, the app, the compiled suites) lives as long as the process:
    # frozen, it is out of the collector's reach, so a full collection walks only what was
    # made since (it walked it all, ~100 ms with the GIL held, in the middle of requests).
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run(sockets=[sock])
