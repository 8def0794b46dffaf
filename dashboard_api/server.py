"""The dashboard API process: ``create_app`` builds the ASGI app, ``serve`` runs it.

    provisioner api                # what systemd runs (one uvicorn process)

Routes: the page at ``/`` (static, no build step), the JSON API under ``/api/``, OpenAPI at
``/docs`` and ``/openapi.json``, ``/healthz`` and ``/metrics``; the Stripe webhook at
``/webhooks/stripe``.

Guards, outermost first: metrics, security headers, CORS (one origin), per-address rate limit
on /api/, body size limit; then FastAPI (per-customer rate limit and auth in the routes).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dashboard_api import account, devices, errors, guards, routes, server_access, stripe_webhook
from dashboard_api.context import ApiState, state
from dashboard_api.metrics import ApiMetrics, MetricsMiddleware
from dashboard_api.schemas import HealthOut, document_locations
from dashboard_api.tokens import require_secret
from provisioner import __version__, db
from provisioner.settings.schema import Settings
from provisioner.wiring import App

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
GRACEFUL_SHUTDOWN_SECONDS = 3     # SIGTERM: requests in flight get this long, then the process exits


def create_app(app: App, *, clock: Callable[[], dt.datetime] | None = None) -> FastAPI:
    settings = app.settings
    secret = require_secret(settings)  # refuses to build without a secret: ConfigError, one line
    rpm = settings.api.requests_per_minute
    st = ApiState(app=app, clock=clock or app.clock, secret=secret,
                  per_customer=guards.SlidingWindowLimiter(rpm), per_ip=guards.SlidingWindowLimiter(rpm),
                  metrics=ApiMetrics(lambda: app.sessions))
    api = FastAPI(title="Provisioner dashboard API", version=__version__, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json",
                  description="The customer's VPN servers: list, rebuild, schedule, download the .ovpn; "
                              "devices, SSH keys, the root password, restart; account, history and usage. "
                              "Errors always look like {\"error\": {\"code\": \"...\", \"message\": \"...\"}}.")
    api.state.provisioner = app   # the App: what dashboard_api.stripe_webhook reads
    api.state.dashboard = st
    errors.install(api)
    api.include_router(routes.router)
    for customer_router in (devices.router, server_access.router, account.router):  # the customer's own server
        api.include_router(customer_router)
    _add_service_routes(api)
    api.include_router(stripe_webhook.router)
    api.mount("/static", StaticFiles(directory=STATIC), name="static")
    _document_locations(api, settings)

    ancestors = {o for o in (guards.origin_of(settings.storefront.url), guards.origin_of(settings.api.cors_origin))
                 if o}
    # add_middleware wraps: the last added is the outermost.
    api.add_middleware(guards.BodyLimit, max_bytes=settings.api.max_body_bytes)
    api.add_middleware(guards.IpRateLimit, limiter=st.per_ip)
    api.add_middleware(guards.Cors, origin=settings.api.cors_origin)
    api.add_middleware(guards.SecurityHeaders, frame_ancestors=ancestors)
    api.add_middleware(MetricsMiddleware, metrics=st.metrics)
    return api


def _document_locations(api: FastAPI, settings: Settings) -> None:
    regions = sorted({r for p in settings.products.values() for r in p.regions})
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = document_locations(build(), regions)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def _add_service_routes(api: FastAPI) -> None:
    @api.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @api.get("/healthz", response_model=HealthOut, responses=errors.responses(503), tags=["service"],
             summary="200 when the database answers, else 503")
    def healthz(st: ApiState = Depends(state)) -> HealthOut:  # noqa: B008
        try:
            db.check_connection(st.app.engine)
        except db.DatabaseUnavailable:
            raise errors.ApiError(503, "database_unavailable", "The database is not reachable.") from None
        return HealthOut(status="ok")

    @api.get("/metrics", tags=["service"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}},
             summary="Prometheus metrics: requests by route and status, latency, servers by status")
    def metrics(st: ApiState = Depends(state)) -> Response:  # noqa: B008
        return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST,
                        headers={"Cache-Control": "no-store"})


def serve(settings: Settings) -> int:
    """Run the API in this process until SIGTERM/Ctrl-C (uvicorn, one worker)."""
    import uvicorn

    require_secret(settings)
    app = App(settings)
    db.require_schema(app.engine)
    api = create_app(app)
    # uvloop and httptools (uvicorn[standard]'s fast loop and parser) are pinned dependencies.
    config = uvicorn.Config(api, host=settings.api.listen_host, port=settings.api.listen_port, workers=1,
                            loop="uvloop", http="httptools", log_config=None, server_header=False, proxy_headers=True,
                            timeout_keep_alive=5, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    hide_query_strings(logging.getLogger("uvicorn.access"))
    log.info("dashboard API on http://%s:%s (public URL %s)", settings.api.listen_host, settings.api.listen_port,
             settings.api.public_url)
    server = uvicorn.Server(config)
    threading.Thread(target=_tell_systemd, args=(server,), name="sd-notify", daemon=True).start()
    server.run()
    return 0


class QueryStringFilter(logging.Filter):
    """The access log never shows a query string: a dashboard token pasted into a URL
    (``?token=…``) must not land in the journal. The path stays, the query becomes ``?…``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def hide_query_strings(logger: logging.Logger) -> None:
    if not any(isinstance(f, QueryStringFilter) for f in logger.filters):
        logger.addFilter(QueryStringFilter())


def _tell_systemd(server: Any) -> None:
    """Type=notify: READY once uvicorn listens, then a watchdog ping while it runs."""
    from provisioner import sdnotify

    while not server.started and not server.should_exit:
        time.sleep(0.2)
    if not sdnotify.notify("READY=1"):
        return  # not under systemd
    while not server.should_exit:
        sdnotify.notify("WATCHDOG=1")
        time.sleep(15)
