"""The customer's devices: list, add, revoke, and each device's own profile.

Every device has its own key, so a lost phone is cut off alone: revoking it erases its keys at
once and the server refuses it as soon as the new CRL and WireGuard peer list reach it (within a
minute). A plan with WireGuard gives each device a ``.conf`` too, also shown as a QR code. The rules
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
WG_CONF_TYPE = "application/x-wireguard-profile"
DeviceId = Path(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="the device's id")


def _file_responses(media_type: str, description: str) -> dict[int | str, dict[str, object]]:
    return {200: {"content": {media_type: {"schema": {"type": "string"}}}, "description": description},
            **responses(*AUTHED, 404, 409, 410, 422, 503)}


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
            responses=_file_responses("application/x-openvpn-profile", "the device's OpenVPN client profile"),
            summary="Download one device's OpenVPN profile (.ovpn)")
def download_profile(device_id: str = DeviceId, name: str = ServerName,  # noqa: B008
                     who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    data, filename = _profile(st, who, name, device_id, access.OPENVPN)
    return _secret(data, "application/x-openvpn-profile", filename)


@router.get("/{device_id}/conf", response_class=Response,
            responses=_file_responses(WG_CONF_TYPE, "the device's WireGuard configuration"),
            summary="Download one device's WireGuard configuration (.conf), for a plan that offers WireGuard")
def download_wireguard(device_id: str = DeviceId, name: str = ServerName,  # noqa: B008
                       who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    data, filename = _profile(st, who, name, device_id, access.WIREGUARD)
    return _secret(data, WG_CONF_TYPE, filename)


@router.get("/{device_id}/qr", response_class=Response,
            responses=_file_responses("image/svg+xml", "the device's WireGuard configuration as a QR code"),
            summary="One device's WireGuard configuration as a QR code (SVG), for the WireGuard apps' scanner")
def wireguard_qr(device_id: str = DeviceId, name: str = ServerName,  # noqa: B008
                 who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    from provisioner.vpn.qr import render_qr_svg

    data, filename = _profile(st, who, name, device_id, access.WIREGUARD)
    svg = render_qr_svg(data, title=f"WireGuard configuration {filename}",
                        description="Scan with the WireGuard app: add a tunnel, then create from QR code.")
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


def _profile(st: ApiState, who: Customer, name: str, device_id: str, protocol: str) -> tuple[bytes, str]:
    """One device's profile for one protocol, for its owner only (the bytes hold its key)."""
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals(), scoped.readable():
            return service.device_profile(s, st.app.secret_box, row, device_id, protocol)


def _secret(data: bytes, media_type: str, filename: str) -> Response:
    return Response(data, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})
