"""EDD-shaped tables for tests and the demo storefront, on SQLite and MySQL/MariaDB.

The MySQL column types follow the plugins' own DDL (REFERENCE §3): EDD Recurring's
``EDD_Subscriptions_DB`` 1.4.1.3, EDD 3's BerlinDB customers table, EDD 2's
``EDD_DB_Customers`` (with ``payment_ids``/``notes``), and WordPress core ``users`` and
``options``. On SQLite the same columns get SQLite affinities. Indexes other than primary and
unique keys are left out; the reader does not need them.

Nothing here is used against a production storefront: the reader never writes.

Dates passed to the insert helpers are the site's local wall-clock time (naive datetimes,
or raw strings for tests that want odd values), exactly as EDD stores them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import Connection, Engine, inspect, text

from provisioner.storefront.edd import table_name, validate_table_prefix

CustomersSchema = Literal["edd3", "edd2"]
EDD_TABLES = ("edd_subscriptions", "edd_customers", "users", "options")

# (column, MySQL declaration, SQLite declaration)
Column = tuple[str, str, str]
_BIN = "CHARACTER SET utf8 COLLATE utf8_bin"

SUBSCRIPTIONS: list[Column] = [
    ("id", "bigint(20) NOT NULL AUTO_INCREMENT", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("customer_id", "bigint(20) NOT NULL", "INTEGER NOT NULL"),
    ("period", "varchar(20) NOT NULL", "TEXT NOT NULL"),
    ("initial_amount", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("initial_tax_rate", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("initial_tax", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("recurring_amount", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("recurring_tax_rate", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("recurring_tax", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("bill_times", "bigint(20) NOT NULL", "INTEGER NOT NULL"),
    ("transaction_id", f"varchar(255) {_BIN} NOT NULL", "TEXT NOT NULL"),
    ("parent_payment_id", "bigint(20) NOT NULL", "INTEGER NOT NULL"),
    ("product_id", "bigint(20) NOT NULL", "INTEGER NOT NULL"),
    ("price_id", "bigint(20) DEFAULT '0'", "INTEGER DEFAULT 0"),
    ("created", "datetime NOT NULL", "DATETIME NOT NULL"),
    ("expiration", "datetime NOT NULL", "DATETIME NOT NULL"),
    ("trial_period", "varchar(20) NOT NULL", "TEXT NOT NULL"),
    ("status", "varchar(20) NOT NULL", "TEXT NOT NULL"),
    ("profile_id", f"varchar(255) {_BIN} NOT NULL", "TEXT NOT NULL"),
    ("notes", "longtext NOT NULL", "TEXT NOT NULL"),
]
_SUBSCRIPTION_KEYS = ("PRIMARY KEY (id), KEY profile_id (profile_id), KEY customer (customer_id), "
                      "KEY `transaction` (transaction_id), KEY customer_and_status (customer_id, status), "
                      "KEY product_id_price_id (product_id, price_id)")

CUSTOMERS_EDD3: list[Column] = [
    ("id", "bigint(20) unsigned NOT NULL AUTO_INCREMENT", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("user_id", "bigint(20) unsigned NOT NULL DEFAULT '0'", "INTEGER NOT NULL DEFAULT 0"),
    ("email", "varchar(100) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT '' UNIQUE"),
    ("name", "varchar(255) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("status", "varchar(20) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("purchase_value", "decimal(18,9) NOT NULL DEFAULT '0'", "NUMERIC NOT NULL DEFAULT 0"),
    ("purchase_count", "bigint(20) unsigned NOT NULL DEFAULT '0'", "INTEGER NOT NULL DEFAULT 0"),
    ("date_created", "datetime NOT NULL DEFAULT CURRENT_TIMESTAMP", "DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP"),
    ("date_modified", "datetime NOT NULL DEFAULT CURRENT_TIMESTAMP", "DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP"),
    ("uuid", "varchar(100) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
]
CUSTOMERS_EDD2: list[Column] = [
    ("id", "bigint(20) NOT NULL AUTO_INCREMENT", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("user_id", "bigint(20) NOT NULL", "INTEGER NOT NULL"),
    ("email", "varchar(50) NOT NULL", "TEXT NOT NULL UNIQUE"),
    ("name", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("purchase_value", "mediumtext NOT NULL", "TEXT NOT NULL"),
    ("purchase_count", "bigint(20) NOT NULL", "INTEGER NOT NULL"),
    ("payment_ids", "longtext NOT NULL", "TEXT NOT NULL"),
    ("notes", "longtext NOT NULL", "TEXT NOT NULL"),
    ("date_created", "datetime NOT NULL", "DATETIME NOT NULL"),
]
_CUSTOMER_KEYS = "PRIMARY KEY (id), UNIQUE KEY email (email), KEY user (user_id)"

USERS: list[Column] = [
    ("ID", "bigint(20) unsigned NOT NULL AUTO_INCREMENT", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("user_login", "varchar(60) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("user_pass", "varchar(255) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("user_nicename", "varchar(50) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("user_email", "varchar(100) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("user_url", "varchar(100) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("user_registered", "datetime NOT NULL DEFAULT '0000-00-00 00:00:00'",
     "DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00'"),
    ("user_activation_key", "varchar(255) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("user_status", "int(11) NOT NULL DEFAULT '0'", "INTEGER NOT NULL DEFAULT 0"),
    ("display_name", "varchar(250) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
]
_USER_KEYS = "PRIMARY KEY (ID), KEY user_login_key (user_login), KEY user_email (user_email)"

OPTIONS: list[Column] = [
    ("option_id", "bigint(20) unsigned NOT NULL AUTO_INCREMENT", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("option_name", "varchar(191) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT '' UNIQUE"),
    ("option_value", "longtext NOT NULL", "TEXT NOT NULL"),
    ("autoload", "varchar(20) NOT NULL DEFAULT 'yes'", "TEXT NOT NULL DEFAULT 'yes'"),
]
_OPTION_KEYS = "PRIMARY KEY (option_id), UNIQUE KEY option_name (option_name)"

# What WordPress's wpdb::set_sql_mode() strips from the session, so zero dates etc. behave as on a real site.
_WP_INCOMPATIBLE_MODES = {"NO_ZERO_DATE", "ONLY_FULL_GROUP_BY", "STRICT_TRANS_TABLES", "STRICT_ALL_TABLES",
                          "TRADITIONAL", "ANSI"}


def create_edd_tables(engine: Engine, prefix: str = "wp_", *, customers: CustomersSchema = "edd3",
                      reverse_columns: bool = False, extra_subscription_columns: Sequence[Column] = (),
                      expiration_nullable: bool = False) -> None:
    """Create the four tables the reader joins, if they do not exist.

    ``reverse_columns``/``extra_subscription_columns`` (placed first) exist to prove the reader
    selects by name; ``expiration_nullable`` allows the NULL that Recurring's NOT NULL forbids.
    """
    subscriptions = list(SUBSCRIPTIONS)
    if expiration_nullable:
        subscriptions = [("expiration", "datetime DEFAULT NULL", "DATETIME") if c[0] == "expiration" else c
                         for c in subscriptions]
    subscriptions = list(extra_subscription_columns) + (subscriptions[::-1] if reverse_columns else subscriptions)
    customer_columns = CUSTOMERS_EDD3 if customers == "edd3" else CUSTOMERS_EDD2
    with engine.begin() as conn, wordpress_sql_mode(conn):
        _create(conn, prefix, "edd_subscriptions", subscriptions, _SUBSCRIPTION_KEYS)
        _create(conn, prefix, "edd_customers", customer_columns, _CUSTOMER_KEYS)
        _create(conn, prefix, "users", USERS, _USER_KEYS)
        _create(conn, prefix, "options", OPTIONS, _OPTION_KEYS)


def drop_edd_tables(engine: Engine, prefix: str = "wp_") -> None:
    with engine.begin() as conn:
        for name in EDD_TABLES:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table_name(conn, prefix, name)}")


def _create(conn: Connection, prefix: str, name: str, columns: Sequence[Column], mysql_keys: str) -> None:
    mysql = _is_mysql(conn)
    body = ",\n  ".join(f"{col} {my if mysql else lite}" for col, my, lite in columns)
    if mysql:
        body += ",\n  " + mysql_keys
        tail = " DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    else:
        tail = ""
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {table_name(conn, prefix, name)} (\n  {body}\n){tail}")


@contextmanager
def wordpress_sql_mode(conn: Connection) -> Iterator[None]:
    """On MySQL, run the block in the sql_mode WordPress uses, and restore the session's after."""
    if not _is_mysql(conn):
        yield
        return
    before = conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar_one()
    relaxed = ",".join(m for m in str(before).split(",") if m and m not in _WP_INCOMPATIBLE_MODES)
    conn.execute(text("SET SESSION sql_mode = :mode"), {"mode": relaxed})
    try:
        yield
    finally:
        conn.execute(text("SET SESSION sql_mode = :mode"), {"mode": before})


def site_datetime(value: dt.datetime | str | None) -> str | None:
    """A naive site-local datetime as EDD writes it (``Y-m-d H:i:s``); strings pass through."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        raise ValueError("EDD stores site-local wall-clock times: pass a naive datetime "
                         "(see provisioner.storefront.edd.utc_to_site_local)")
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _insert(conn: Connection, prefix: str, name: str, values: Mapping[str, Any]) -> int:
    cols = ", ".join(values)
    binds = ", ".join(f":{c}" for c in values)
    with wordpress_sql_mode(conn):
        result = conn.execute(text(f"INSERT INTO {table_name(conn, prefix, name)} ({cols}) VALUES ({binds})"),
                              dict(values))
    return int(result.lastrowid)


def insert_wp_user(conn: Connection, prefix: str, *, email: str, login: str | None = None,
                   user_id: int | None = None) -> int:
    login = login or email.split("@")[0]
    values: dict[str, Any] = {"user_login": login, "user_email": email, "user_nicename": login,
                              "display_name": login, "user_registered": "2024-01-01 00:00:00"}
    if user_id is not None:
        values = {"ID": user_id, **values}
    return _insert(conn, prefix, "users", values)


def insert_customer(conn: Connection, prefix: str, *, email: str, user_id: int = 0, name: str = "",
                    customer_id: int | None = None) -> int:
    """A customer row in whichever customers schema (EDD 2 or 3) the table has."""
    values: dict[str, Any] = {"user_id": user_id, "email": email, "name": name}
    if customer_id is not None:
        values = {"id": customer_id, **values}
    columns = {c["name"] for c in inspect(conn).get_columns(validate_table_prefix(prefix) + "edd_customers")}
    if "payment_ids" in columns:  # EDD 2: NOT NULL columns without defaults
        values.update(purchase_value="0.00", purchase_count=0, payment_ids="", notes="",
                      date_created="2024-01-01 00:00:00")
    return _insert(conn, prefix, "edd_customers", values)


def insert_subscription(conn: Connection, prefix: str, *, customer_id: int, product_id: int | str,
                        status: str, expiration: dt.datetime | str | None,
                        created: dt.datetime | str | None = None, price_id: int | str | None = 0,
                        profile_id: str = "", period: str = "month", recurring_amount: str = "9.99",
                        subscription_id: int | None = None, notes: str = "") -> int:
    """A Recurring subscription row. Dates are site-local (naive) or raw strings."""
    values: dict[str, Any] = {
        "customer_id": customer_id, "period": period, "initial_amount": recurring_amount,
        "initial_tax_rate": "", "initial_tax": "", "recurring_amount": recurring_amount,
        "recurring_tax_rate": "", "recurring_tax": "", "bill_times": 0,
        "transaction_id": f"txn-{profile_id}" if profile_id else "", "parent_payment_id": 0,
        "product_id": product_id, "price_id": price_id,
        "created": site_datetime(created) or "2024-01-01 00:00:00",
        "expiration": site_datetime(expiration), "trial_period": "", "status": status,
        "profile_id": profile_id, "notes": notes,
    }
    if subscription_id is not None:
        values = {"id": subscription_id, **values}
    return _insert(conn, prefix, "edd_subscriptions", values)


def set_option(conn: Connection, prefix: str, name: str, value: str) -> None:
    """Insert or replace one ``{prefix}options`` row."""
    options = table_name(conn, prefix, "options")
    conn.execute(text(f"DELETE FROM {options} WHERE option_name = :name"), {"name": name})
    _insert(conn, prefix, "options", {"option_name": name, "option_value": value, "autoload": "yes"})


def get_option(conn: Connection, prefix: str, name: str) -> str | None:
    options = table_name(conn, prefix, "options")
    value = conn.execute(text(f"SELECT option_value FROM {options} WHERE option_name = :name"),
                         {"name": name}).scalar()
    return None if value is None else str(value)


def _is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")
