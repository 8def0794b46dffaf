"""The customer's API: list servers, rebuild now, set the schedule, download the .ovpn.

Like the seed's mini-API, the API only *records* what the customer asked on the row (the
worker carries it out): rebuild -> ``rebuild_now_status``/``rebuild_now_location``; schedule ->
``rebuild_schedule``/``rebuild_schedule_location``. Rows are written through the ORM so the
version column fences against a worker that changed the row meanwhile (that answers 409).
Every change also writes a ``ServerEvent`` with actor ``customer``.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Path, Response
from pydantic import TypeAdapter
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from dashboard_api import queries, views
from dashboard_api.context import LANGUAGES, REFRESH_SECONDS, ApiState, customer, state
from dashboard_api.errors import ApiError, responses
from dashboard_api.guards import retry_after
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
from provisioner.models import RANDOM_LOCATION, Server, ServerEvent
from provisioner.schedule import last_slot
from provisioner.secrets import UndecryptableSecret

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")
AUTHED = (401, 429)
_SERVER_LIST: TypeAdapter[list[ServerOut]] = TypeAdapter(list[ServerOut])
ServerName = Path(min_length=1, max_length=191, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]*$",
                  description="the server's DNS name or its short name (g0001)")


@router.get("/config", response_model=ConfigOut, responses=responses(429), tags=["page"],
            summary="What the page needs before it can sign in (public)")
def get_config(st: ApiState = Depends(state)) -> ConfigOut:  # noqa: B008
    return ConfigOut(storefront_url=st.settings.storefront.url, languages=list(LANGUAGES),
                     refresh_seconds=REFRESH_SECONDS)


@router.get("/servers", response_model=list[ServerOut], responses=responses(*AUTHED), tags=["servers"],
            summary="The caller's servers (Destroyed ones are left out)")
def list_servers(who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        items = views.servers_out(s, queries.customer_servers(s, who.email), st.settings, now)
    # The hot path (the page polls it): serialised once here instead of re-validated by FastAPI.
    return Response(_SERVER_LIST.dump_json(items), media_type="application/json")


@router.get("/locations", response_model=list[RegionOut], responses=responses(*AUTHED), tags=["servers"],
            summary="The locations the caller's plans allow")
def list_locations(who: Customer = Depends(customer), st: ApiState = Depends(state)) -> list[RegionOut]:  # noqa: B008
    with st.app.sessions() as s:
        rows = queries.customer_servers(s, who.email)
    seen: dict[str, RegionOut] = {}
    for owned in rows:
        product = st.settings.product(owned.row.product_id)
        for rid in product.regions if product else ():
            r = region(rid)
            if r and rid not in seen:
                seen[rid] = RegionOut(id=r.id, city=r.city, country=r.country)
    return list(seen.values())


@router.post("/servers/{name}/rebuild", status_code=202, response_model=AcceptedOut,
             responses=responses(*AUTHED, 404, 409, 413, 422), tags=["servers"],
             summary="Ask for a rebuild now, in a location of the plan or a random one")
def rebuild(body: RebuildRequest, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
            st: ApiState = Depends(state)) -> AcceptedOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        owned = _owned(s, st, who, name)
        row = owned.row
        location = _location(st, row, body.location)
        if views.is_busy(row):
            raise ApiError(409, "busy", _busy_message(row))
        cooldown = st.settings.api.rebuild_cooldown_seconds
        if row.rebuild_requested_at is not None:
            wait = (row.rebuild_requested_at - now).total_seconds() + cooldown
            if wait > 0:
                raise ApiError(429, "rebuild_cooldown", f"You asked for a rebuild recently; you can ask again in "
                               f"{retry_after(wait)} seconds.", {"Retry-After": retry_after(wait)})
        row.rebuild_now_status, row.rebuild_now_location, row.rebuild_requested_at = True, location, now
        row.rebuild_due_at = None  # a customer's own rebuild is not spread like a scheduled one
        s.add(ServerEvent(server_id=row.id, at=now, actor="customer", what="rebuild.requested", outcome="info",
                          detail=f"location {location}"))
        _commit(s, row)
        log.info("customer asked to rebuild %s in %s", row.server_name, location)
        return AcceptedOut(status="accepted", server=views.servers_out(s, [owned], st.settings, now)[0])


@router.put("/servers/{name}/schedule", response_model=ServerOut,
            responses=responses(*AUTHED, 404, 409, 413, 422), tags=["servers"],
            summary="Set the rebuild schedule and where scheduled rebuilds go")
def set_schedule(body: ScheduleRequest, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
                 st: ApiState = Depends(state)) -> ServerOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        owned = _owned(s, st, who, name)
        row = owned.row
        location = _location(st, row, body.location)
        before = (row.rebuild_schedule, row.rebuild_schedule_location)
        if before != (body.schedule, location):
            if row.rebuild_schedule != body.schedule:
                # A new schedule starts with the *next* slot (what the page shows as "next rebuild"),
                # not with a catch-up of a slot that began before the customer chose it.
                row.schedule_slot_done = last_slot(body.schedule, now)
            row.rebuild_schedule, row.rebuild_schedule_location = body.schedule, location
            s.add(ServerEvent(server_id=row.id, at=now, actor="customer", what="schedule.changed", outcome="info",
                              detail=f"{before[0]}/{before[1]} -> {body.schedule}/{location}"))
            _commit(s, row)
        return views.servers_out(s, [owned], st.settings, now)[0]


@router.get("/servers/{name}/ovpn", response_class=Response, tags=["servers"],
            responses={200: {"content": {"application/x-openvpn-profile": {"schema": {"type": "string"}}},
                             "description": "the OpenVPN client profile"},
                       **responses(*AUTHED, 404, 409, 422, 503)},
            summary="Download the OpenVPN client profile (.ovpn)")
def download_ovpn(name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
                  st: ApiState = Depends(state)) -> Response:  # noqa: B008
    with st.app.sessions() as s:
        row = _owned(s, st, who, name).row
        token, server_name = queries.ovpn_token(s, row.id), row.server_name or "server"
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


def _owned(s: Session, st: ApiState, who: Customer, name: str) -> queries.Owned:
    owned = queries.customer_server(s, who.email, name, st.settings.cloudflare.domain)
    if owned is None:
        raise ApiError(404, "server_not_found", f"You have no server called {name}.")
    return owned


def _location(st: ApiState, row: Server, wanted: str) -> str:
    product = st.settings.product(row.product_id)
    allowed = list(product.regions) if product else []
    if wanted == RANDOM_LOCATION or wanted in allowed:
        return wanted
    raise ApiError(422, "invalid_location", f"'{wanted}' is not a location of your plan; choose one of "
                   f"{', '.join([*allowed, RANDOM_LOCATION])}.")


def _busy_message(row: Server) -> str:
    if row.rebuild_now_status:
        return "A rebuild is already requested for this server; it starts within a minute or two."
    if row.action:
        return f"This server is busy ({row.status}); try again when it is Running."
    return f"This server is {row.status}; it can be rebuilt when it is Running."


def _commit(s: Session, row: Server) -> None:
    try:
        s.commit()
    except StaleDataError:
        s.rollback()
        raise ApiError(409, "conflict", "The server changed while we were saving; reload and try again.") from None
