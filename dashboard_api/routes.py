"""The customer's API: list servers, rebuild now, set the schedule, download the .ovpn.

Like the seed's mini-API, the API only *records* what the customer asked (the worker
carries it out), and it does so through the domain's customer service
(:mod:`provisioner.customer`), which holds the rules and writes the audit events. Rows are
written through the ORM so the version column fences against a worker that changed the
row meanwhile (that answers 409).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Path, Response
from sqlalchemy import Connection

from dashboard_api import queries, scoped, views
from dashboard_api.context import LANGUAGES, REFRESH_SECONDS, ApiState, CustomerRead, customer, state
from dashboard_api.errors import ApiError, responses
from dashboard_api.locations import region
from dashboard_api.schemas import (
    AcceptedOut,
    ConfigOut,
    RebuildRequest,
    RegionOut,
    ScheduleRequest,
    ServerOut,
)
from dashboard_api.tokens import Customer
from provisioner import customer as service
from provisioner.schedule import SCHEDULES
from provisioner.secrets import UndecryptableSecret
from provisioner.settings.schema import OPENVPN

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

router = APIRouter(prefix="/api")
AUTHED = (401, 429)
ServerName = Path(min_length=1, max_length=191, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]*$",
                  description="the server's DNS name or its short name (g0001)")


@router.get("/config", response_model=ConfigOut, responses=responses(429), tags=["page"],
            summary="What the page needs before it can sign in (public)")
def get_config(st: ApiState = Depends(state)) -> ConfigOut:  # noqa: B008
    return ConfigOut(storefront_url=st.settings.storefront.url, languages=list(LANGUAGES),
                     refresh_seconds=REFRESH_SECONDS, schedules=list(SCHEDULES))


# The reads (the page polls /api/servers every 15 s) are async routes on plain rows: indexed
# queries on a read connection (ApiState.read: on the event loop for SQLite, in a thread for
# MariaDB), no ORM session, the body serialised once with orjson, and their two dependencies
# resolved by CustomerRead rather than FastAPI's general solver. The writes below stay sync,
# on the ORM.

def _customer_read(path: str, **kwargs: Any) -> Callable[[F], F]:
    """``@router.get(path, ...)`` for a :class:`CustomerRead` endpoint."""
    def add(endpoint: F) -> F:
        router.add_api_route(path, endpoint, methods=["GET"], route_class_override=CustomerRead, **kwargs)
        return endpoint
    return add


@_customer_read("/servers", response_model=list[ServerOut], responses=responses(*AUTHED), tags=["servers"],
                summary="The caller's servers (Destroyed ones are left out)")
async def list_servers(who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    now = st.clock()
    body = await st.read(lambda conn: st.listing.body(conn, who.user_id, st.settings, now))
    return Response(body, media_type="application/json")


@_customer_read("/locations", response_model=list[RegionOut], responses=responses(*AUTHED), tags=["servers"],
                summary="The locations the caller's plans allow")
async def list_locations(who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    rows = await st.read(lambda conn: queries.customer_rows(conn, who.user_id))
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        product = st.settings.product(row.product_id)
        for rid in product.regions if product else ():
            r = region(rid)
            if r and rid not in seen:
                seen[rid] = {"id": r.id, "city": r.city, "country": r.country}
    return Response(views.dumps(list(seen.values())), media_type="application/json")


@router.post("/servers/{name}/rebuild", status_code=202, response_model=AcceptedOut,
             responses=responses(*AUTHED, 404, 409, 413, 422), tags=["servers"],
             summary="Ask for a rebuild now, in a location of the plan or a random one")
def rebuild(body: RebuildRequest, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
            st: ApiState = Depends(state)) -> AcceptedOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        owned = _owned(s, st, who, name)
        with _refusals():
            service.request_rebuild(s, st.settings, owned.row, body.location, now=now)
        _commit(s)
        log.info("customer asked to rebuild %s in %s", owned.row.server_name, owned.row.rebuild_now_location)
        return AcceptedOut(status="accepted", server=views.servers_out(s, [owned], st.settings, now)[0])


@router.put("/servers/{name}/schedule", response_model=ServerOut,
            responses=responses(*AUTHED, 404, 409, 413, 422), tags=["servers"],
            summary="Set the rebuild schedule and where scheduled rebuilds go")
def set_schedule(body: ScheduleRequest, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
                 st: ApiState = Depends(state)) -> ServerOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        owned = _owned(s, st, who, name)
        with _refusals():
            changed = service.set_schedule(s, st.settings, owned.row, body.schedule, body.location, now=now)
        if changed:
            _commit(s)
        return views.servers_out(s, [owned], st.settings, now)[0]


@router.get("/servers/{name}/ovpn", response_class=Response, tags=["servers"],
            responses={200: {"content": {"application/x-openvpn-profile": {"schema": {"type": "string"}}},
                             "description": "the OpenVPN client profile"},
                       **responses(*AUTHED, 404, 409, 422, 503)},
            summary="Download the OpenVPN client profile (.ovpn)")
async def download_ovpn(name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
                       st: ApiState = Depends(state)) -> Response:  # noqa: B008
    def find(conn: Connection) -> tuple[queries.ServerRow | None, str | None]:
        row = queries.find_row(queries.customer_rows(conn, who.user_id), name, st.settings.cloudflare.domain)
        return row, queries.ovpn_token(conn, row.id) if row is not None else None

    row, token = await st.read(find)
    if row is None:
        raise ApiError(404, "server_not_found", f"You have no server called {name}.")
    server_name = row.server_name or "server"
    if row.on_hold:
        raise ApiError(409, "suspended", "This server is suspended by support; please contact them.")
    product = st.settings.product(row.product_id)
    if product is not None and not product.offers(OPENVPN):
        raise ApiError(404, "profile_not_found", "Your plan offers WireGuard only: download each device's "
                       "WireGuard configuration from its devices.")
    if not token:
        raise ApiError(409, "not_ready", "The configuration file is not ready yet; it is made when the server "
                       "is first running.")
    try:
        data = st.app.secret_box.open(token)
    except UndecryptableSecret:
        log.error("the .ovpn of %s cannot be decrypted with the configured keys", server_name)
        raise ApiError(503, "unavailable", "Your configuration file cannot be read right now. Our team has "
                       "been alerted; please try again later.") from None
    short = server_name.split(".", 1)[0]
    return Response(data, media_type="application/x-openvpn-profile", headers={
        "Content-Disposition": f'attachment; filename="{short}.ovpn"', "Cache-Control": "no-store"})


# Shared with the routes of dashboard_api.devices, .server_access and .account.
_owned, _refusals, _commit = scoped.owned, scoped.refusals, scoped.commit
