"""The customer's access to their server itself: the root password, their SSH keys, key-only
login, and "Restart server". The rules live in :mod:`provisioner.customer`; the worker carries
changes to the running server (within a minute) and every rebuild keeps them.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Path, Response
from sqlalchemy.orm import Session

from dashboard_api import scoped
from dashboard_api.context import ApiState, customer, state
from dashboard_api.customer_schemas import (
    KeyOnly,
    NewSSHKey,
    RestartOut,
    RootPasswordOut,
    SSHAccessOut,
    SSHKeyOut,
)
from dashboard_api.errors import responses
from dashboard_api.routes import AUTHED, ServerName
from dashboard_api.tokens import Customer
from provisioner import access, sshkeys
from provisioner import customer as service
from provisioner.models import Server, SSHKey

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/servers/{name}", tags=["server access"])
NO_STORE = {"Cache-Control": "no-store"}
REBUILD_NOTE = "A rebuild gives your server a new root password; come back here for it afterwards."


def _key(k: SSHKey) -> SSHKeyOut:
    return SSHKeyOut(id=k.id, key_type=k.key_type, bits=k.bits, fingerprint=k.fingerprint, comment=k.comment,
                     created_at=k.created_at)


def _access(s: Session, row: Server) -> SSHAccessOut:
    return SSHAccessOut(key_only=bool(row.key_only),
                        password_available=bool(row.root_password_enc) and not row.key_only,
                        pending=row.access_pending_since is not None, max_keys=sshkeys.MAX_KEYS_PER_SERVER,
                        keys=[_key(k) for k in access.ssh_keys(s, row.id)])


@router.post("/root-password", response_model=RootPasswordOut, responses=responses(*AUTHED, 404, 409, 503),
             summary="Show the server's root password (each view is in the server's history)")
def root_password(response: Response, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
                  st: ApiState = Depends(state)) -> RootPasswordOut:  # noqa: B008
    response.headers.update(NO_STORE)
    now = st.clock()
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals(), scoped.readable():
            password = service.reveal_root_password(s, st.settings, st.app.secret_box, row, actor=service.ACTOR,
                                                    now=now)
        scoped.commit(s)
    return RootPasswordOut(password=password, note=REBUILD_NOTE)


@router.get("/ssh", response_model=SSHAccessOut, responses=responses(*AUTHED, 404),
            summary="The customer's SSH keys on the server and whether login is key-only")
def ssh_access(name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
               st: ApiState = Depends(state)) -> SSHAccessOut:  # noqa: B008
    with st.app.sessions() as s:
        return _access(s, scoped.owned(s, st, who, name).row)


@router.post("/ssh/keys", status_code=201, response_model=SSHKeyOut, responses=responses(*AUTHED, 404, 409, 413, 422),
             summary="Add a public key (ed25519, ecdsa, or rsa of 3072 bits and more)")
def add_key(body: NewSSHKey, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
            st: ApiState = Depends(state)) -> SSHKeyOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals():
            added = service.add_ssh_key(s, row, body.public_key, now=now)
        scoped.commit(s)
        log.info("customer added SSH key %s to %s", added.fingerprint, row.server_name)
        return _key(added)


@router.delete("/ssh/keys/{key_id}", response_model=SSHAccessOut, responses=responses(*AUTHED, 404, 409, 422),
               summary="Remove a public key")
def remove_key(key_id: int = Path(ge=1, le=2**31 - 1), name: str = ServerName,  # noqa: B008
               who: Customer = Depends(customer), st: ApiState = Depends(state)) -> SSHAccessOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals():
            gone = service.remove_ssh_key(s, row, key_id, now=now)
        scoped.commit(s)
        log.info("customer removed SSH key %s from %s", gone.fingerprint, row.server_name)
        return _access(s, row)


@router.put("/ssh/key-only", response_model=SSHAccessOut, responses=responses(*AUTHED, 404, 409, 413, 422),
            summary="Key-only login on (the root password stops working) or off")
def key_only(body: KeyOnly, name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
             st: ApiState = Depends(state)) -> SSHAccessOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals():
            changed = service.set_key_only(s, row, body.key_only, now=now)
        if changed:
            scoped.commit(s)
        return _access(s, row)


@router.post("/restart", status_code=202, response_model=RestartOut, responses=responses(*AUTHED, 404, 409),
             summary="Restart the server (a reboot; it is back within a few minutes)")
def restart(name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
            st: ApiState = Depends(state)) -> RestartOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        with scoped.refusals():
            service.request_restart(s, st.settings, row, now=now)
        scoped.commit(s)
        log.info("customer asked to restart %s", row.server_name)
    return RestartOut(status="accepted")
