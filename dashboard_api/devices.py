"""The customer's devices: list, add, revoke, and each device's own profile.

Every device has its own key, so a lost phone is cut off alone: revoking it erases its key at
once and the server refuses it as soon as the new CRL reaches it (within a minute). The rules
live in :mod:`provisioner.customer`; these routes only translate.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Path, Response
from sqlalchemy.orm import Session

from dashboard_api import scoped
from dashboard_api.context import ApiState, customer, state
from dashboard_api.customer_schemas import DeviceOut, DevicesOut, NewDevice, ProfileOut
from dashboard_api.errors import responses
from dashboard_api.routes import AUTHED, ServerName
from dashboard_api.tokens import Customer
from provisioner import access
from provisioner import customer as service
from provisioner.models import Device

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/servers/{name}/devices", tags=["devices"])
DeviceId = Path(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="the device's id")


def _out(device: Device, profiles: dict[int, list[ProfileOut]]) -> DeviceOut:
    return DeviceOut(id=device.device_id, name=device.name, created_at=device.created_at,
                     revoked_at=device.revoked_at, profiles=profiles.get(device.id, []))


def _profiles(s: Session, found: list[Device]) -> dict[int, list[ProfileOut]]:
    return {pk: [ProfileOut(protocol=p.protocol, revoked_at=p.revoked_at) for p in items]
            for pk, items in access.profiles(s, found).items()}


@router.get("", response_model=DevicesOut, responses=responses(*AUTHED, 404),
            summary="The server's devices, revoked ones included")
def list_devices(name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
                 st: ApiState = Depends(state)) -> DevicesOut:  # noqa: B008
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        found = access.devices(s, row.id)
        product = st.settings.product(row.product_id)
        return DevicesOut(max_devices=product.max_devices if product else 1, ready=service.profiles_ready(row),
                          devices=[_out(d, _profiles(s, found)) for d in found])


@router.post("", status_code=201, response_model=DeviceOut, responses=responses(*AUTHED, 404, 409, 413, 422),
             summary="Add a device: it gets its own profile")
def add_device(body: NewDevice, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
               st: ApiState = Depends(state)) -> DeviceOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals(), scoped.readable():
            device = service.add_device(s, st.settings, st.app.secret_box, row, body.name, now=now)
        scoped.commit(s)
        log.info("customer added device %s to %s", device.device_id, row.server_name)
        return _out(device, _profiles(s, [device]))


@router.delete("/{device_id}", response_model=DeviceOut, responses=responses(*AUTHED, 404, 409, 422),
               summary="Revoke a device: all its profiles stop working, the others go on")
def revoke_device(device_id: str = DeviceId, name: str = ServerName,  # noqa: B008
                  who: Customer = Depends(customer), st: ApiState = Depends(state)) -> DeviceOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals(), scoped.readable():
            device = service.revoke_device(s, st.app.secret_box, row, device_id, now=now)
        scoped.commit(s)
        log.info("customer revoked device %s of %s", device.device_id, row.server_name)
        return _out(device, _profiles(s, [device]))


@router.get("/{device_id}/ovpn", response_class=Response,
            responses={200: {"content": {"application/x-openvpn-profile": {"schema": {"type": "string"}}},
                             "description": "the device's OpenVPN client profile"},
                       **responses(*AUTHED, 404, 409, 410, 422, 503)},
            summary="Download one device's OpenVPN profile (.ovpn)")
def download_profile(device_id: str = DeviceId, name: str = ServerName,  # noqa: B008
                     who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals(), scoped.readable():
            data, filename = service.device_profile(s, st.app.secret_box, row, device_id)
    return Response(data, media_type="application/x-openvpn-profile", headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})
