"""The read path (plain rows from the driver, serialised with orjson) shows exactly what the
ORM and the response models would show, and its shortcuts keep the security checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from dashboard_api import queries, views
from dashboard_api.schemas import ServerOut
from provisioner.models import ServerEvent, Status
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import ACCOUNTS, OWNER, T0, ApiEnv, build_env

_LIST: TypeAdapter[list[ServerOut]] = TypeAdapter(list[ServerOut])


def _orm_body(env: ApiEnv) -> bytes:
    with env.app.sessions() as s:
        owned = queries.customer_servers(s, ACCOUNTS[OWNER])
        return _LIST.dump_json(views.servers_out(s, owned, env.settings, env.clock.now))


def test_it_lists_byte_for_byte_what_the_response_model_would(api_env: ApiEnv, owner: dict[str, str]) -> None:
    # Given rows in every shape the page shows: an error needing a human, a rebuild asked for,
    # a step in progress, a schedule, an unknown product, times with and without microseconds
    api_env.set("g0001", status=Status.ERROR.value, needs_human=True, rebuild_schedule="weekly",
                last_rebuilt_at=T0 - dt.timedelta(microseconds=123_456), human_alerted_at=T0)
    api_env.set("g0002", paused=True)                                             # paused by support
    api_env.add_server(OWNER, "g0007", rebuild_now_status=True, rebuild_now_location="ams", product_id="nope",
                       bandwidth_this_month=None, ovpn=None)
    api_env.add_server(OWNER, "g0008", status=Status.DESTROYED.value, operator_hold_at=T0,  # suspended by support
                       operator_hold_reason="abuse report")
    with api_env.app.sessions() as s:
        for k in range(14):
            s.add(ServerEvent(server_id=api_env.row("g0001").id, at=T0 - dt.timedelta(minutes=k, microseconds=k * 7),
                              actor="worker", what=f"step{k}", outcome="ok", detail=""))
        s.commit()

    # When the customer lists their servers
    r = api_env.client.get("/api/servers", headers=owner)

    # Then the body is exactly the ORM + pydantic rendering of the same rows
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == _orm_body(api_env)
    listed = {s["short_name"]: s for s in r.json()}
    assert len(listed["g0001"]["events"]) == 10 and listed["g0001"]["events"][0]["what"] == "step0"
    assert listed["g0007"]["regions"] == [] and listed["g0007"]["ovpn_available"] is False
    assert listed["g0001"]["last_error_code"] == "needs_attention"
    assert (listed["g0002"]["support_hold"], listed["g0008"]["support_hold"]) == ("paused", "suspended")
    assert (listed["g0008"]["status"], listed["g0008"]["ip"], listed["g0008"]["ovpn_available"]) == (
        "Suspended", None, False)


def test_it_still_refuses_a_token_once_it_expires_after_being_accepted(api_env: ApiEnv) -> None:
    # Given a token the API has accepted (and remembers as correctly signed)
    headers = {"Authorization": f"Bearer {api_env.token(ttl=600)}"}
    assert api_env.client.get("/api/servers", headers=headers).status_code == 200

    # When its lifetime (and the clock-skew leeway) has passed
    api_env.clock.advance(600 + 31)

    # Then it is refused like any expired token
    r = api_env.client.get("/api/servers", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


def test_it_does_not_remember_a_refused_signature(api_env: ApiEnv) -> None:
    forged = api_env.raw_token({"email": OWNER, "sub": "1", "aud": api_env.settings.api.jwt_audience,
                                "iat": int(T0.timestamp()), "exp": int(T0.timestamp()) + 600}, secret="x" * 40)
    for _ in range(2):
        r = api_env.client.get("/api/servers", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


@pytest.fixture
def any_db_env(tmp_path: Path, db_url: str) -> Iterator[ApiEnv]:
    e = build_env(tmp_path, database_url=db_url)
    e.add_server(OWNER, "g0001")
    e.add_server(OWNER, "g0002")
    with e.client:
        yield e
    e.app.engine.dispose()


def test_it_reads_on_through_a_connection_that_died(any_db_env: ApiEnv) -> None:
    # Given the read connection, closed behind the API's back (as a database restart would)
    owner = any_db_env.headers()
    assert any_db_env.client.get("/api/servers", headers=owner).status_code == 200
    reader = any_db_env.api.state.dashboard.reader
    (conn,) = reader._idle
    conn.connection.dbapi_connection.close()

    # When the customer reads again, then the read is made on a new connection
    r = any_db_env.client.get("/api/servers", headers=owner)
    assert r.status_code == 200 and len(r.json()) == 2
    assert any_db_env.client.get("/api/servers/g0001/ovpn", headers=owner).status_code == 200


def test_it_sees_a_change_the_worker_commits_at_once(api_env: ApiEnv, owner: dict[str, str]) -> None:
    assert api_env.client.get("/api/servers", headers=owner).json()[0]["status"] == "Running"
    api_env.set("g0001", status=Status.ERROR.value)          # another session commits
    assert api_env.client.get("/api/servers", headers=owner).json()[0]["status"] == "Error"
