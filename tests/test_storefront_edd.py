"""EddStorefront against real EDD-shaped tables, on SQLite and MariaDB (see tests/fixtures/edd.py)."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from provisioner.db import make_engine
from provisioner.storefront import eddschema
from provisioner.storefront.demo import (
    DEMO_PRODUCT_ID,
    DemoStorefront,
    add_subscription,
    cancel_subscription,
    seed_demo_storefront,
)
from provisioner.storefront.edd import EddStorefront, table_name
from provisioner.subscriptions import StorefrontUnavailable, Subscription
from tests.fixtures.edd import PrefixFactory
from tests.fixtures.net import free_port

UTC = dt.UTC
NOW = dt.datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def wall(instant: dt.datetime) -> dt.datetime:
    """The naive wall-clock time of a UTC instant on a site whose zone is UTC."""
    return instant.astimezone(UTC).replace(tzinfo=None)


def given_site(
    engine: Engine, prefix: str, *, timezone_string: str | None = "UTC", gmt_offset: str | None = "0", **tables: Any
) -> None:
    eddschema.create_edd_tables(engine, prefix, **tables)
    with engine.begin() as conn:
        if timezone_string is not None:
            eddschema.set_option(conn, prefix, "timezone_string", timezone_string)
        if gmt_offset is not None:
            eddschema.set_option(conn, prefix, "gmt_offset", gmt_offset)


def given_subscriptions(
    engine: Engine, prefix: str, rows: list[tuple[str, Any]], *, email: str = "buyer@shop.test"
) -> list[int]:
    """One guest customer with one subscription per (status, site-local expiration)."""
    with engine.begin() as conn:
        customer = eddschema.insert_customer(conn, prefix, email=email)
        return [
            eddschema.insert_subscription(
                conn, prefix, customer_id=customer, product_id=7, status=status, expiration=expiration
            )
            for status, expiration in rows
        ]


def by_id(subs: list[Subscription]) -> dict[int, Subscription]:
    return {int(s.id): s for s in subs}


def entitled_ids(subs: list[Subscription], now: dt.datetime) -> set[int]:
    return {int(s.id) for s in subs if s.entitled(now)}


# --- entitlement -------------------------------------------------------------------------

STATUS_MATRIX: list[tuple[str, dt.timedelta]] = [
    ("active", DAY),  # 1 paid for another day
    ("active", -dt.timedelta(hours=1)),  # 2 stale: EDD has not expired it yet
    ("trialling", 3 * DAY),  # 3
    ("trialling", -DAY),  # 4
    ("cancelled", 7 * DAY),  # 5 cancelled but paid until next week
    ("cancelled", -dt.timedelta(seconds=1)),  # 6
    ("failing", -2 * DAY),  # 7 inside the 3-day grace
    ("failing", -4 * DAY),  # 8 outside it
    ("pending", 30 * DAY),  # 9
    ("expired", 30 * DAY),  # 10
    ("completed", 30 * DAY),  # 11
    ("Needs Attention", 30 * DAY),  # 12 unknown
    ("canceled", 30 * DAY),  # 13 Stripe's spelling is not EDD's: unknown
]


def test_it_entitles_exactly_what_edd_treats_as_active(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given a subscription in every status, with past and future expirations
    p = edd_prefix()
    given_site(edd_engine, p)
    ids = given_subscriptions(edd_engine, p, [(s, wall(NOW + d)) for s, d in STATUS_MATRIX])
    assert ids == list(range(1, 14))

    # When the storefront is read
    subs = by_id(EddStorefront(edd_engine, table_prefix=p).read(NOW))

    # Then active/trialling/cancelled entitle until expiration, failing until expiration + 3 days
    assert entitled_ids(list(subs.values()), NOW) == {1, 3, 5, 7}
    assert {i: s.entitled_until for i, s in subs.items()} == {
        1: NOW + DAY,
        2: NOW - dt.timedelta(hours=1),
        3: NOW + 3 * DAY,
        4: NOW - DAY,
        5: NOW + 7 * DAY,
        6: NOW - dt.timedelta(seconds=1),
        7: NOW + DAY,
        8: NOW - DAY,
        9: None,
        10: None,
        11: None,
        12: None,
        13: None,
    }
    assert [subs[i].status for i in sorted(subs)] == [s for s, _ in STATUS_MATRIX]


@pytest.mark.parametrize(("grace_days", "entitled"), [(0, set()), (3, {1}), (5, {1, 2})])
def test_it_gives_failing_subscriptions_only_the_configured_grace(
    edd_engine: Engine, edd_prefix: PrefixFactory, grace_days: int, entitled: set[int]
) -> None:
    # Given renewals that failed 2 and 4 days ago
    p = edd_prefix()
    given_site(edd_engine, p)
    given_subscriptions(edd_engine, p, [("failing", wall(NOW - 2 * DAY)), ("failing", wall(NOW - 4 * DAY))])

    # When read with a grace of `grace_days`
    subs = EddStorefront(edd_engine, p, failing_grace=dt.timedelta(days=grace_days)).read(NOW)

    # Then only those still inside the grace entitle
    assert entitled_ids(subs, NOW) == entitled


def test_it_warns_once_per_unknown_status(
    edd_engine: Engine, edd_prefix: PrefixFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two rows with one unknown status and one with another
    p = edd_prefix()
    given_site(edd_engine, p)
    exp = wall(NOW + DAY)
    given_subscriptions(edd_engine, p, [("on-hold", exp), ("on-hold", exp), ("paused", exp), ("active", exp)])
    storefront = EddStorefront(edd_engine, p)

    # When read twice
    with caplog.at_level(logging.WARNING, logger="provisioner.storefront.edd"):
        storefront.read(NOW)
        subs = storefront.read(NOW)

    # Then each unknown status is logged once at WARNING, and does not entitle
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("'on-hold'" in w for w in warnings) and any("'paused'" in w for w in warnings)
    assert entitled_ids(subs, NOW) == {4}


def test_it_does_not_entitle_a_missing_or_zero_expiration(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given entitling statuses whose expiration is NULL or MySQL's zero date
    p = edd_prefix()
    given_site(edd_engine, p, expiration_nullable=True)
    zero = "0000-00-00 00:00:00"
    given_subscriptions(
        edd_engine,
        p,
        [("active", None), ("active", zero), ("cancelled", zero), ("failing", zero), ("active", wall(NOW + DAY))],
    )

    # When read
    subs = by_id(EddStorefront(edd_engine, p).read(NOW))

    # Then none of them entitles, and the well-dated row still does
    assert {i: s.entitled_until for i, s in subs.items()} == {1: None, 2: None, 3: None, 4: None, 5: NOW + DAY}


# --- who and what --------------------------------------------------------------------------


@pytest.mark.parametrize("customers", ["edd3", "edd2"])
def test_it_reports_the_wordpress_email_for_users_and_the_customer_email_for_guests(
    edd_engine: Engine, edd_prefix: PrefixFactory, customers: str
) -> None:
    # Given a guest, a registered user whose WP email differs from the billing email,
    # and a customer whose WP user has since been deleted, in an EDD 2 or EDD 3 customers table
    p = edd_prefix()
    given_site(edd_engine, p, customers=customers)
    exp = wall(NOW + DAY)
    with edd_engine.begin() as conn:
        eddschema.insert_wp_user(conn, p, email="someone-else@users.test", user_id=1)
        wp_user = eddschema.insert_wp_user(conn, p, email="login@users.test", user_id=42)
        guest = eddschema.insert_customer(conn, p, email="guest@shop.test", user_id=0, customer_id=10)
        member = eddschema.insert_customer(conn, p, email="billing@shop.test", user_id=wp_user, customer_id=11)
        orphan = eddschema.insert_customer(conn, p, email="gone@shop.test", user_id=999, customer_id=12)
        for customer, profile in ((guest, "sub_guest"), (member, "sub_member"), (orphan, "")):
            eddschema.insert_subscription(
                conn, p, customer_id=customer, product_id=123, status="active", expiration=exp, profile_id=profile
            )

    # When read
    subs = EddStorefront(edd_engine, p).read(NOW)

    # Then each subscription says who it belongs to
    assert subs == [
        Subscription(
            id="1",
            customer_id="10",
            product_id="123",
            email="guest@shop.test",
            status="active",
            entitled_until=NOW + DAY,
            profile_id="sub_guest",
            user_id=0,
            paid_through=NOW + DAY,
            account_id=None,          # a guest: no account to sign in with
        ),
        Subscription(
            id="2",
            customer_id="11",
            product_id="123",
            email="login@users.test",
            status="active",
            entitled_until=NOW + DAY,
            profile_id="sub_member",
            user_id=42,
            paid_through=NOW + DAY,
            account_id="42",
        ),
        Subscription(
            id="3",
            customer_id="12",
            product_id="123",
            email="gone@shop.test",
            status="active",
            entitled_until=NOW + DAY,
            profile_id="",
            user_id=999,
            paid_through=NOW + DAY,
            account_id="999",
        ),
    ]


def test_it_folds_a_nonzero_price_id_into_the_product_id(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given one download sold without variable pricing, and as price options 1 and 2
    p = edd_prefix()
    given_site(edd_engine, p)
    with edd_engine.begin() as conn:
        c = eddschema.insert_customer(conn, p, email="a@shop.test")
        for price_id in (0, 1, 2, None):
            eddschema.insert_subscription(
                conn, p, customer_id=c, product_id=55, price_id=price_id, status="active", expiration=wall(NOW + DAY)
            )

    # When read
    subs = EddStorefront(edd_engine, p).read(NOW)

    # Then the price option is part of the product id only when it is not 0 (NULL counts as 0)
    assert [s.product_id for s in subs] == ["55", "55:1", "55:2", "55"]


def test_it_selects_by_name_whatever_the_column_order_and_extra_columns(
    edd_engine: Engine, edd_prefix: PrefixFactory
) -> None:
    # Given a subscriptions table in reverse order, with extra columns named like the ones we read
    p = edd_prefix()
    extra = [
        ("gateway", "varchar(100) NOT NULL DEFAULT 'stripe'", "TEXT NOT NULL DEFAULT 'stripe'"),
        ("email", "varchar(100) NOT NULL DEFAULT 'decoy@shop.test'", "TEXT NOT NULL DEFAULT 'decoy@shop.test'"),
        ("user_id", "bigint(20) NOT NULL DEFAULT '777'", "INTEGER NOT NULL DEFAULT 777"),
    ]
    given_site(edd_engine, p, reverse_columns=True, extra_subscription_columns=extra)
    with edd_engine.begin() as conn:
        c = eddschema.insert_customer(conn, p, email="real@shop.test", customer_id=5)
        eddschema.insert_subscription(
            conn,
            p,
            customer_id=c,
            product_id=9,
            price_id=3,
            status="cancelled",
            expiration=wall(NOW + 2 * DAY),
            profile_id="sub_X",
        )

    # When read
    subs = EddStorefront(edd_engine, p).read(NOW)

    # Then every field comes from the column of that name
    assert subs == [
        Subscription(
            id="1",
            customer_id="5",
            product_id="9:3",
            email="real@shop.test",
            status="cancelled",
            entitled_until=NOW + 2 * DAY,
            profile_id="sub_X",
            user_id=0,
            paid_through=NOW + 2 * DAY,
        )
    ]


def test_it_reads_only_the_tables_of_its_prefix(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given two WordPress sites in one database, under "wp_" and "shop_"
    wp, shop = edd_prefix("wp_"), edd_prefix("shop_")
    for prefix, email in ((wp, "wp@site.test"), (shop, "shop@site.test")):
        given_site(edd_engine, prefix)
        given_subscriptions(edd_engine, prefix, [("active", wall(NOW + DAY))], email=email)
    given_subscriptions(edd_engine, shop, [("active", wall(NOW + DAY))], email="second@site.test")

    # When each is read with its own prefix
    wp_subs = EddStorefront(edd_engine, wp).read(NOW)
    shop_subs = EddStorefront(edd_engine, shop).read(NOW)

    # Then each sees only its own rows
    assert [s.email for s in wp_subs] == ["wp@site.test"]
    assert [s.email for s in shop_subs] == ["shop@site.test", "second@site.test"]


def test_it_reads_one_subscription_by_id(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given three subscriptions
    p = edd_prefix()
    given_site(edd_engine, p)
    given_subscriptions(
        edd_engine, p, [("active", wall(NOW + DAY)), ("expired", wall(NOW - DAY)), ("cancelled", wall(NOW + 2 * DAY))]
    )
    storefront = EddStorefront(edd_engine, p)

    # When one is read by id, Then it is the same value the full read gives
    assert storefront.read_one("2") == storefront.read(NOW)[1]
    assert storefront.read_one(3) == storefront.read(NOW)[2]
    # And ids that are not there, or not EDD ids at all, are None
    assert storefront.read_one("4") is None
    assert storefront.read_one("sub_1Nx") is None
    assert storefront.read_one("1 OR 1=1") is None


# --- site time zone -------------------------------------------------------------------------


def test_it_reads_dates_as_new_york_wall_clock_time_across_dst(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given a site in America/New_York and expirations around both 2024 DST changes
    p = edd_prefix()
    given_site(edd_engine, p, timezone_string="America/New_York", gmt_offset="-5")
    given_subscriptions(
        edd_engine,
        p,
        [
            ("active", "2024-11-03 01:30:00"),  # 1 happens twice (EDT, then EST)
            ("active", "2024-03-10 02:30:00"),  # 2 never happens (clocks jump 02:00 -> 03:00)
            ("active", "2024-07-01 12:00:00"),  # 3 EDT
            ("active", "2024-12-01 12:00:00"),  # 4 EST
            ("active", "2024-11-03 00:30:00"),  # 5 EDT, just before fall-back
            ("active", "2024-11-03 03:00:00"),  # 6 EST, just after
        ],
    )

    # When read at 06:00 UTC on fall-back day (01:00 EST, the second 01:00)
    now = utc(2024, 11, 3, 6, 0)
    subs = EddStorefront(edd_engine, p).read(now)

    # Then each is converted to UTC, resolving DST ambiguity towards the later instant
    assert {int(s.id): s.entitled_until for s in subs} == {
        1: utc(2024, 11, 3, 6, 30),
        2: utc(2024, 3, 10, 7, 30),
        3: utc(2024, 7, 1, 16, 0),
        4: utc(2024, 12, 1, 17, 0),
        5: utc(2024, 11, 3, 4, 30),
        6: utc(2024, 11, 3, 8, 0),
    }
    assert entitled_ids(subs, now) == {1, 4, 6}


@pytest.mark.parametrize(
    ("timezone_string", "gmt_offset", "expected"),
    [
        ("", "5.5", utc(2025, 1, 1, 4, 30)),
        ("", "5.75", utc(2025, 1, 1, 4, 15)),
        ("", "-3.5", utc(2025, 1, 1, 13, 30)),
        ("", "-5", utc(2025, 1, 1, 15, 0)),
        ("", "", utc(2025, 1, 1, 10, 0)),
        (None, None, utc(2025, 1, 1, 10, 0)),
        ("Asia/Kolkata", "-5", utc(2025, 1, 1, 4, 30)),
    ],
)
def test_it_falls_back_to_the_gmt_offset_without_a_timezone_string(
    edd_engine: Engine,
    edd_prefix: PrefixFactory,
    timezone_string: str | None,
    gmt_offset: str | None,
    expected: dt.datetime,
) -> None:
    # Given a site with (or without) these options and an expiration at 10:00 local
    p = edd_prefix()
    given_site(edd_engine, p, timezone_string=timezone_string, gmt_offset=gmt_offset)
    given_subscriptions(edd_engine, p, [("active", "2025-01-01 10:00:00")])

    # When read
    [sub] = EddStorefront(edd_engine, p).read(NOW)

    # Then the local time is read in that zone
    assert sub.entitled_until == expected


def test_it_uses_an_explicit_site_timezone_without_reading_options(
    edd_engine: Engine, edd_prefix: PrefixFactory
) -> None:
    # Given a site without an options table at all
    p = edd_prefix()
    given_site(edd_engine, p, timezone_string="America/New_York")
    given_subscriptions(edd_engine, p, [("active", "2025-01-01 10:00:00")])
    with edd_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {table_name(conn, p, 'options')}")

    # When read with site_timezone given
    [sub] = EddStorefront(edd_engine, p, site_timezone="Asia/Tokyo").read(NOW)

    # Then that zone is used
    assert sub.entitled_until == utc(2025, 1, 1, 1, 0)


@pytest.mark.parametrize(
    ("timezone_string", "gmt_offset", "named"),
    [
        ("Mars/Olympus_Mons", "0", "Mars/Olympus_Mons"),
        ("", "five", "gmt_offset"),
        ("", "24", "gmt_offset"),
    ],
)
def test_it_is_unavailable_when_the_site_timezone_is_unreadable(
    edd_engine: Engine, edd_prefix: PrefixFactory, timezone_string: str, gmt_offset: str, named: str
) -> None:
    p = edd_prefix()
    given_site(edd_engine, p, timezone_string=timezone_string, gmt_offset=gmt_offset)
    given_subscriptions(edd_engine, p, [("active", wall(NOW + DAY))])

    with pytest.raises(StorefrontUnavailable, match="time zone") as caught:
        EddStorefront(edd_engine, p).read(NOW)
    assert named in str(caught.value)


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["edd_subscriptions", "edd_customers", "users", "options"])
def test_it_is_unavailable_when_a_table_is_missing(edd_engine: Engine, edd_prefix: PrefixFactory, missing: str) -> None:
    # Given a complete site with rows, minus one table
    p = edd_prefix()
    given_site(edd_engine, p)
    given_subscriptions(edd_engine, p, [("active", wall(NOW + DAY))])
    with edd_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {table_name(conn, p, missing)}")

    # When read, Then it raises, naming the table, instead of returning an empty list
    with pytest.raises(StorefrontUnavailable) as caught:
        EddStorefront(edd_engine, p).read(NOW)
    assert p + missing in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_it_is_unavailable_when_the_database_cannot_be_reached(backend: str, tmp_path) -> None:
    # Given a MySQL server that refuses connections, or an SQLite path that cannot be opened
    if backend == "mysql":
        engine = make_engine(f"mysql+pymysql://wp:s3cret-pw@127.0.0.1:{free_port()}/wordpress")
        expected = "Can't connect"
    else:
        engine = create_engine(f"sqlite:///{tmp_path}")  # a directory
        expected = "unable to open database file"

    # When read, Then it raises a one-line message with the reason and no password
    with pytest.raises(StorefrontUnavailable) as caught:
        EddStorefront(engine).read(NOW)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.mysql
def test_it_never_shows_the_password_when_access_is_denied(edd_mysql_url: str) -> None:
    # Given the right server with a wrong password, which (bad practice) is also the user name
    url = make_url(edd_mysql_url).set(username="wrong-horse-battery", password="wrong-horse-battery")
    engine = make_engine(url.render_as_string(hide_password=False))

    # When read, Then access is denied, and the password is nowhere in what we show
    with pytest.raises(StorefrontUnavailable, match=r"\(\d+\) Access denied for user '\*\*\*'") as caught:
        EddStorefront(engine).read(NOW)
    assert "wrong-horse-battery" not in str(caught.value)
    assert "wrong-horse-battery" not in repr(EddStorefront(engine))


@pytest.mark.mysql
@pytest.mark.parametrize("edd_engine", ["mysql"], indirect=True)
def test_it_is_unavailable_when_permission_is_denied(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given a MySQL user that may read subscriptions but not customers
    p = edd_prefix()
    given_site(edd_engine, p)
    given_subscriptions(edd_engine, p, [("active", wall(NOW + DAY))])
    user, password = f"edd_ro_{secrets.token_hex(3)}", "pw-" + secrets.token_hex(8)
    database = edd_engine.url.database
    limited = make_engine(edd_engine.url.set(username=user, password=password).render_as_string(False))
    try:
        with edd_engine.begin() as conn:
            try:
                conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            except DBAPIError as exc:
                pytest.skip(f"the test database user may not CREATE USER: {exc.orig}")
            for name in ("edd_subscriptions", "users", "options"):
                conn.execute(text(f"GRANT SELECT ON `{database}`.{table_name(conn, p, name)} TO '{user}'@'%'"))

        # When that user reads, Then it raises, naming the denied table, without the password
        with pytest.raises(StorefrontUnavailable, match="denied") as caught:
            EddStorefront(limited, p).read(NOW)
        assert p + "edd_customers" in str(caught.value)
        assert password not in str(caught.value)
    finally:
        limited.dispose()
        with edd_engine.begin() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))


def test_it_marks_a_row_whose_date_is_unparseable_as_no_evidence_and_reads_the_rest(
    edd_engine: Engine, edd_prefix: PrefixFactory
) -> None:
    # Given good rows and one whose expiration is not a date (on MySQL: a day that does not exist)
    p = edd_prefix()
    given_site(edd_engine, p)
    given_subscriptions(edd_engine, p, [("active", wall(NOW + DAY)), ("active", wall(NOW + DAY))])
    bad = "2025-02-30 00:00:00" if edd_engine.dialect.name != "sqlite" else "next tuesday"
    with edd_engine.connect() as conn:
        if edd_engine.dialect.name != "sqlite":
            conn.exec_driver_sql("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        conn.execute(
            text(f"UPDATE {table_name(conn, p, 'edd_subscriptions')} SET expiration = :bad WHERE id = 2"), {"bad": bad}
        )
        conn.commit()
        conn.invalidate()  # do not hand the relaxed session back to the pool

    # When read, Then the good row entitles, and the bad one neither entitles nor ended, saying why
    subs = by_id(EddStorefront(edd_engine, p).read(NOW))
    assert subs[1].entitled(NOW)
    assert not subs[2].entitled(NOW) and not subs[2].ended(NOW)
    assert subs[2].problem is not None and subs[2].problem.startswith("expiration ")
    assert "\n" not in subs[2].problem


@pytest.mark.parametrize("edd_engine", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("edd_subscriptions", "product_id", "vpn-monthly"),
        ("edd_subscriptions", "price_id", "gold"),
        ("edd_customers", "user_id", "admin"),
    ],
)
def test_it_is_unavailable_when_an_id_is_not_numeric(
    edd_engine: Engine, edd_prefix: PrefixFactory, table: str, column: str, value: str
) -> None:
    # Given (on SQLite, where an INTEGER column can hold text) a non-numeric id next to good rows
    p = edd_prefix()
    given_site(edd_engine, p)
    given_subscriptions(edd_engine, p, [("active", wall(NOW + DAY)), ("active", wall(NOW + DAY))])
    with edd_engine.begin() as conn:
        conn.execute(text(f"UPDATE {table_name(conn, p, table)} SET {column} = :v"), {"v": value})

    # When read, Then it raises, naming the column and the value
    with pytest.raises(StorefrontUnavailable, match="malformed row") as caught:
        EddStorefront(edd_engine, p).read(NOW)
    assert column in str(caught.value) and repr(value) in str(caught.value)


@pytest.mark.parametrize(
    "prefix", ["", "wp-", "wp_;DROP TABLE wp_users;--", "wp_\n", "wp_ ", "x" * 33, "wp`_", "wp\u00e9_"]
)
def test_it_refuses_a_table_prefix_that_is_not_safe_in_sql(prefix: str) -> None:
    with pytest.raises(ValueError, match="table prefix"):
        EddStorefront(create_engine("sqlite://"), table_prefix=prefix)


def test_it_accepts_any_wordpress_style_prefix() -> None:
    for prefix in ("wp_", "WP2_", "x" * 32, "_", "1site_"):
        EddStorefront(create_engine("sqlite://"), table_prefix=prefix)


def test_it_refuses_an_unknown_site_timezone_or_a_naive_now() -> None:
    with pytest.raises(ValueError, match="IANA"):
        EddStorefront(create_engine("sqlite://"), site_timezone="Nowhere/City")
    with pytest.raises(ValueError, match="aware"):
        EddStorefront(create_engine("sqlite://")).read(NOW.replace(tzinfo=None))


# --- the demo storefront --------------------------------------------------------------------


def test_it_seeds_the_demo_storefront_once_with_the_intended_mix(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given an empty database, When the demo is seeded twice
    p = edd_prefix()
    first = seed_demo_storefront(edd_engine, p, now=NOW)
    second = seed_demo_storefront(edd_engine, p, now=NOW + DAY)

    # Then the rows were added once, on a New York site
    assert (first, second) == (6, 0)
    with edd_engine.connect() as conn:
        assert eddschema.get_option(conn, p, "timezone_string") == "America/New_York"
    subs = {s.email: s for s in EddStorefront(edd_engine, p).read(NOW)}
    assert len(subs) == 6
    # And they entitle as intended
    assert {e: (s.status, s.entitled_until) for e, s in subs.items()} == {
        "alice@example.com": ("active", NOW + 25 * DAY),
        "bob@example.com": ("trialling", NOW + 6 * DAY),
        "carol@example.com": ("cancelled", NOW + 7 * DAY),
        "dave@example.com": ("failing", NOW + 2 * DAY),
        "erin@example.com": ("expired", None),
        "frank@example.com": ("pending", None),
    }
    assert {e for e, s in subs.items() if s.entitled(NOW)} == {
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    }
    assert {e for e, s in subs.items() if s.user_id} == {"alice@example.com", "carol@example.com", "erin@example.com"}
    assert {s.product_id for s in subs.values()} == {str(DEMO_PRODUCT_ID)}


def test_it_lets_a_demo_user_buy_and_cancel(edd_engine: Engine, edd_prefix: PrefixFactory) -> None:
    # Given the seeded demo
    p = edd_prefix()
    demo = DemoStorefront(edd_engine, p)
    demo.seed(NOW)
    reader = demo.reader()
    alice = next(s for s in reader.read(NOW) if s.email == "alice@example.com")

    # When a new customer and an existing one buy 30 days
    gina = add_subscription(edd_engine, p, "gina@example.com", DEMO_PRODUCT_ID, 30, NOW)
    again = demo.add_subscription("alice@example.com", 2, 30, NOW)

    # Then both entitle for 30 days, alice's on her existing customer record
    for sub_id, email in ((gina, "gina@example.com"), (again, "alice@example.com")):
        sub = reader.read_one(sub_id)
        assert sub is not None and (sub.email, sub.status, sub.entitled_until) == (email, "active", NOW + 30 * DAY)
    again_sub = reader.read_one(again)
    assert again_sub is not None and again_sub.customer_id == alice.customer_id and again_sub.product_id == "2"

    # When gina cancels at the end of the period, Then she keeps her server until it ends
    cancel_subscription(edd_engine, p, gina, NOW + DAY, immediately=False)
    sub = reader.read_one(gina)
    assert sub is not None and (sub.status, sub.entitled_until) == ("cancelled", NOW + 30 * DAY)

    # When an operator revokes alice's second subscription, Then it stops entitling now
    demo.cancel_subscription(again, NOW + DAY, immediately=True)
    sub = reader.read_one(again)
    assert sub is not None and sub.status == "expired" and not sub.entitled(NOW + DAY)
    assert sub.entitled_until is None

    # And an unknown subscription cannot be cancelled
    with pytest.raises(LookupError):
        cancel_subscription(edd_engine, p, 9999, NOW, immediately=True)
