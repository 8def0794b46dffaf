"""Subscriptions from a WordPress + Easy Digital Downloads (EDD) Recurring Payments database.

Read-only. One SELECT per read::

    {prefix}edd_subscriptions s
    JOIN {prefix}edd_customers c ON c.id = s.customer_id
    LEFT JOIN {prefix}users u ON u.ID = c.user_id      -- user_id 0 = guest checkout

plus one look at ``{prefix}options`` for the site's time zone (unless ``site_timezone`` is
given). Only columns that EDD 2 *and* EDD 3 customer tables share are selected, by name, so
extra columns and column order do not matter.

Entitlement follows EDD's own ``EDD_Subscription::is_active()``, except that we compare
``expiration`` ourselves because EDD expires rows lazily (a row can still say ``active``
after its expiration; see REFERENCE §3.2):

=========================================  ===============================================
status                                     entitled until; ended (evidence for a destroy)
=========================================  ===============================================
``active``, ``trialling``, ``cancelled``   ``expiration``; ended from then on
``failing``                                ``expiration + failing_grace`` (our choice: EDD
                                           itself cuts access at once; we give the gateway
                                           time to retry the card); ended from then on
``expired``, ``completed``                 never; ended (the word says so)
``pending``                                never; not ended either (an unfinished checkout)
anything else                              never; no evidence either way (held, one
                                           WARNING per status word)
=========================================  ===============================================

Status words are compared case-insensitively (a plugin update that writes ``Active`` still
means ``active``). A NULL, zero (``0000-00-00 …``) or unreadable ``expiration`` entitles
nothing and is no evidence either: the row is returned with ``problem`` set, so its server
is held while every other row is planned as usual.

``product_id`` is ``"<download id>"``, or ``"<download id>:<price id>"`` when the row has a
non-zero ``price_id`` (a variable-price option of the same download, which may be a
different plan), so settings can map ``"123"`` and ``"123:2"`` to different products.

Errors: anything that stops us reading the whole truth (connection refused, missing table,
permission denied, a row whose ids are not numbers, an unknown time zone) raises
:class:`StorefrontUnavailable` with a one-line message that never contains the password.
A partial list is never returned.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, RowMapping, text
from sqlalchemy.exc import SQLAlchemyError

from provisioner.subscriptions import (
    ACCOUNT,
    EMAIL,
    ENDS,
    ID,
    PAID,
    PRODUCT,
    RENEWS,
    SOURCE,
    STATUS,
    UNTIL,
    StorefrontUnavailable,
    Subscription,
    SubscriptionRow,
    SubscriptionRows,
    row_of,
)

log = logging.getLogger(__name__)

UTC = dt.UTC
DEFAULT_FAILING_GRACE = dt.timedelta(days=3)

ENTITLED_UNTIL_EXPIRATION = frozenset({"active", "trialling", "cancelled"})
FAILING = "failing"
ENDING = frozenset({"expired", "completed"})
NEVER_ENTITLED = ENDING | {"pending"}
KNOWN_STATUSES = ENTITLED_UNTIL_EXPIRATION | NEVER_ENTITLED | {FAILING}
RENEWING = frozenset({"active", "trialling"})   # EDD bills these again at expiration

_PREFIX = re.compile(r"[A-Za-z0-9_]{1,32}")
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_MAX_GMT_OFFSET_HOURS = 14.0


def validate_table_prefix(prefix: str) -> str:
    """The WordPress ``$table_prefix``; it is pasted into SQL, so only a safe alphabet passes."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(f"EDD table prefix {prefix!r} is not allowed: it must be 1-32 letters, digits "
                         "or underscores (the WordPress $table_prefix, e.g. 'wp_')")
    return prefix


def table_name(engine_or_conn: Engine | Connection, prefix: str, name: str) -> str:
    """``{prefix}{name}``, quoted for the dialect (a prefix may start with a digit)."""
    return engine_or_conn.dialect.identifier_preparer.quote_identifier(validate_table_prefix(prefix) + name)


def zone_from_name(name: str) -> dt.tzinfo:
    """An IANA time zone, or ValueError."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known IANA time zone name (e.g. 'America/New_York')") from None


def zone_from_options(timezone_string: str | None, gmt_offset: str | None) -> dt.tzinfo:
    """The site time zone as WordPress's ``wp_timezone()`` works it out, or ValueError."""
    if timezone_string and timezone_string.strip():
        return zone_from_name(timezone_string)
    raw = (gmt_offset or "").strip()
    if not raw:
        return UTC  # WordPress casts '' to 0.0
    try:
        hours = float(raw)
    except ValueError:
        raise ValueError(f"gmt_offset {raw[:40]!r} is not a number of hours") from None
    if not -_MAX_GMT_OFFSET_HOURS <= hours <= _MAX_GMT_OFFSET_HOURS:
        raise ValueError(f"gmt_offset {raw[:40]!r} is outside -14..14 hours")
    return dt.timezone(dt.timedelta(minutes=round(hours * 60)))


def read_site_timezone(conn: Connection, prefix: str) -> dt.tzinfo:
    """The site's zone from ``{prefix}options``. Raises SQLAlchemyError or ValueError."""
    sql = (f"SELECT option_name, option_value FROM {table_name(conn, prefix, 'options')} "
           "WHERE option_name IN ('timezone_string', 'gmt_offset')")
    options = {str(name): _text(value) for name, value in conn.execute(text(sql)).all()}
    return zone_from_options(options.get("timezone_string"), options.get("gmt_offset"))


def site_local_to_utc(local: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """A naive site wall-clock time as an aware UTC instant.

    Around DST changes a wall-clock time can be ambiguous (fall back: 01:30 happens twice) or
    nonexistent (spring forward: 02:30 never happens). We take the LATER of the two candidate
    instants: an ambiguous time is read in the standard-time (second) offset, a nonexistent one
    in the pre-transition offset. Expirations then err towards keeping a paying customer's
    server for up to an hour longer, never towards destroying it an hour early.
    """
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return max(first, second)


def utc_to_site_local(instant: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """An aware instant as the naive, whole-second wall-clock time EDD would store."""
    if instant.tzinfo is None:
        raise ValueError("expected an aware datetime")
    return instant.astimezone(zone).replace(tzinfo=None, microsecond=0)


def parse_site_datetime(value: Any) -> dt.datetime | None:
    """A DATETIME cell as a naive site-local datetime; None for "no date". ValueError if junk.

    NULL, '' and MySQL's zero date '0000-00-00 00:00:00' (what non-strict MySQL stores for an
    invalid or empty date) all mean "no date". The caller treats that as "does not entitle"
    and as no evidence that it ended either: PHP's strtotime() puts the zero date in year -1,
    so EDD itself would call such a row expired, but a zero date is what a broken import or a
    non-strict MySQL leaves behind, not what EDD writes (Recurring's column is NOT NULL). We
    never grant an open-ended server on a date we cannot read, and never destroy on one.
    """
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    raw = _text(value).strip()
    if not raw or raw.startswith("0000-00-00"):
        return None
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{raw[:40]!r} is not a date") from None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def normal_status(word: str) -> str:
    """A status word as EDD's own code compares it: ``Active`` and ``active `` mean ``active``."""
    return word.strip().lower()


def entitled_until(status: str, expiration: dt.datetime | None,
                   failing_grace: dt.timedelta) -> dt.datetime | None:
    """EDD's entitlement rule for one row (``expiration`` aware UTC, or None = no date).

    EDD's is_expired() is ``now > expiration`` at one-second resolution, i.e. inclusive; ours
    is ``now < entitled_until``. The one second of difference is immaterial here.
    """
    if expiration is None:
        return None
    if status in ENTITLED_UNTIL_EXPIRATION:
        return expiration
    if status == FAILING:
        return expiration + failing_grace
    return None


def subscription_from_row(row: Mapping[str, Any] | RowMapping, zone: dt.tzinfo,
                          failing_grace: dt.timedelta) -> Subscription:
    """One row of the reader's SELECT (``sub_id``, ``product_id``, ``price_id``, ``status``,
    ``expiration``, ``profile_id``, ``customer_id``, ``user_id``, ``customer_email``,
    ``user_email``) as a :class:`Subscription`, by the rules in the module docstring.
    ValueError for ids that are not numbers (a row we cannot even name)."""
    sub_id = _integer(row["sub_id"], "id")
    product_id = _integer(row["product_id"], "product_id")
    price_id = 0 if row["price_id"] is None else _integer(row["price_id"], "price_id")
    user_id = 0 if row["user_id"] is None else _integer(row["user_id"], "customer user_id")
    raw_status = _text(row["status"]) if row["status"] is not None else ""
    status = normal_status(raw_status)
    problem: str | None = None
    expiration: dt.datetime | None = None
    try:
        local = parse_site_datetime(row["expiration"])
        if local is None:
            problem = f"expiration is missing or zero ({_short(row['expiration'])})"
        else:
            expiration = site_local_to_utc(local, zone)
    except (ValueError, OverflowError) as exc:
        problem = f"expiration {exc}"
    if status not in KNOWN_STATUSES:
        problem = f"unknown status {raw_status!r}"
    # A customer whose WordPress user was deleted keeps its user_id (reported as stored) but
    # has no user_email from the LEFT JOIN, so it falls back to the customer's own email.
    email = _text(row["user_email"]) if user_id != 0 and row["user_email"] else _text(row["customer_email"])
    return Subscription(
        id=str(sub_id),
        customer_id=str(_integer(row["customer_id"], "customer id")),
        product_id=f"{product_id}:{price_id}" if price_id != 0 else str(product_id),
        email=email,
        status=raw_status,
        entitled_until=None if problem else entitled_until(status, expiration, failing_grace),
        profile_id=_text(row["profile_id"]),
        user_id=user_id,
        paid_through=expiration,
        ends_by_status=status in ENDING,
        problem=problem,
        account_id=str(user_id) if user_id > 0 else None,
        renews=status in RENEWING,
    )


class EddStorefront:
    """The :class:`~provisioner.storefront.Storefront` for EDD Recurring over SQLAlchemy."""

    def __init__(self, engine: Engine, table_prefix: str = "wp_",
                 failing_grace: dt.timedelta = DEFAULT_FAILING_GRACE,
                 site_timezone: str | None = None) -> None:
        self._prefix = validate_table_prefix(table_prefix)
        if failing_grace < dt.timedelta(0):
            raise ValueError(f"failing_grace must not be negative, got {failing_grace}")
        self._engine = engine
        self._failing_grace = failing_grace
        self._zone = zone_from_name(site_timezone) if site_timezone else None
        self._warned_statuses: set[str] = set()

    def __repr__(self) -> str:
        return self._scrub(f"EddStorefront({self._where()}, table_prefix={self._prefix!r})")

    def read(self, now: dt.datetime) -> list[Subscription]:
        """Every subscription, or raise StorefrontUnavailable. ``now`` must be aware."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime (UTC)")
        subscriptions = self._fetch("", {})
        log.debug("read %d EDD subscriptions from %s, %d entitled at %s", len(subscriptions),
                  self._where(), sum(s.entitled(now) for s in subscriptions), now.isoformat())
        return subscriptions

    def read_rows(self, now: dt.datetime) -> SubscriptionRows:
        """What :meth:`read` returns, as the planning pass's rows: one tuple of plain values per
        subscription, the :class:`Subscription` of a row made only when the planner asks for it
        (the same object :meth:`read` would have made). Same errors, same warnings."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime (UTC)")
        rows: list[SubscriptionRow] = []
        try:
            with self._engine.connect() as conn:
                try:
                    zone = self._zone or read_site_timezone(conn, self._prefix)
                except ValueError as exc:
                    raise self._unavailable(f"cannot read EDD storefront {self._where()}: site time zone: {exc}"
                                            ) from None
                reader = _RowReader(zone, self._failing_grace, self._slow_row)
                # in parts: the driver's rows of one part at a time next to the tuples made of them
                for part in conn.exec_driver_sql(self._select(conn, "", expiration_as_text=True)).partitions(_PART):
                    rows.extend(reader.rows(part))
        except SQLAlchemyError as exc:
            raise self._unavailable(f"cannot read EDD storefront {self._where()}: {_reason(exc)}") from None
        log.debug("read %d EDD subscriptions from %s", len(rows), self._where())
        return SubscriptionRows(rows, _subscription_of_row)

    def _slow_row(self, raw: Sequence[Any], zone: dt.tzinfo) -> SubscriptionRow:
        """A row the fast reader does not take (odd types, unknown status, zero or unreadable
        date): through :func:`subscription_from_row`, exactly as :meth:`read` does."""
        mapping: Any = dict(zip(_COLUMNS, raw, strict=True))
        return row_of(self._convert([mapping], zone)[0])

    def read_one(self, subscription_id: str | int) -> Subscription | None:
        """One subscription by EDD id; None if there is no such row (or the id is not an EDD id)."""
        key = str(subscription_id).strip()
        if not _INTEGER.fullmatch(key):
            return None
        found = self._fetch("WHERE s.id = :id", {"id": int(key)})
        return found[0] if found else None

    def change_marker(self) -> object | None:
        """A cheap fingerprint of "a new subscription arrived": the highest subscription id, one
        primary-key lookup. The worker asks it every second so a new sale is planned within
        seconds instead of at the next tick. None when it cannot be read (the tick says why)."""
        try:
            with self._engine.connect() as conn:
                table = table_name(conn, self._prefix, "edd_subscriptions")
                return ("max-id", conn.execute(text(f"SELECT MAX(id) FROM {table}")).scalar())  # an empty table too
        except SQLAlchemyError:
            return None

    # -- internals -------------------------------------------------------------------------

    def _select(self, conn: Connection, where: str, expiration_as_text: bool = False) -> str:
        p = self._prefix
        # MySQL's DATETIME as its text ('YYYY-MM-DD HH:MM:SS', the zero date too): PyMySQL's own
        # datetime parsing is Python, fromisoformat is C; parse_site_datetime reads both alike
        expiration = "CAST(s.expiration AS CHAR)" if expiration_as_text and conn.dialect.name in (
            "mysql", "mariadb") else "s.expiration"
        return ("SELECT s.id AS sub_id, s.product_id AS product_id, s.price_id AS price_id, "
                f"s.status AS status, {expiration} AS expiration, s.profile_id AS profile_id, "
                "c.id AS customer_id, c.user_id AS user_id, c.email AS customer_email, "
                "u.user_email AS user_email "
                f"FROM {table_name(conn, p, 'edd_subscriptions')} s "
                f"JOIN {table_name(conn, p, 'edd_customers')} c ON c.id = s.customer_id "
                f"LEFT JOIN {table_name(conn, p, 'users')} u ON u.ID = c.user_id "
                f"{where} ORDER BY s.id")

    def _fetch(self, where: str, params: Mapping[str, Any]) -> list[Subscription]:
        try:
            with self._engine.connect() as conn:
                zone = self._zone or read_site_timezone(conn, self._prefix)
                rows = conn.execute(text(self._select(conn, where)), dict(params)).mappings().all()
        except SQLAlchemyError as exc:
            raise self._unavailable(f"cannot read EDD storefront {self._where()}: {_reason(exc)}") from None
        except ValueError as exc:  # the site's time zone options
            raise self._unavailable(f"cannot read EDD storefront {self._where()}: site time zone: {exc}") from None
        return self._convert(rows, zone)

    def _convert(self, rows: Sequence[RowMapping], zone: dt.tzinfo) -> list[Subscription]:
        subscriptions = []
        for row in rows:
            try:
                subscriptions.append(self._subscription(row, zone))
            except (ValueError, TypeError, OverflowError) as exc:
                raise self._unavailable(
                    f"EDD storefront {self._where()} has a malformed row in "
                    f"{self._prefix}edd_subscriptions (id {_short(row.get('sub_id'))}): {exc}") from None
        return subscriptions

    def _subscription(self, row: RowMapping, zone: dt.tzinfo) -> Subscription:
        sub = subscription_from_row(row, zone, self._failing_grace)
        raw_status = sub.status
        if normal_status(raw_status) not in KNOWN_STATUSES and raw_status not in self._warned_statuses:
            self._warned_statuses.add(raw_status)
            log.warning("EDD subscription %s has unknown status %r; treating it (and any other row with "
                        "that status) as neither entitled nor ended: its server is held", sub.id, raw_status)
        return sub

    def _where(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def _unavailable(self, message: str) -> StorefrontUnavailable:
        return StorefrontUnavailable(self._scrub(" ".join(message.split())))

    def _scrub(self, shown: str) -> str:
        """Never the password, even where it also is the user name."""
        password = self._engine.url.password
        return shown.replace(str(password), "***") if password else shown



# --- the planning pass's rows ------------------------------------------------------------------

_COLUMNS = ("sub_id", "product_id", "price_id", "status", "expiration", "profile_id", "customer_id", "user_id",
            "customer_email", "user_email")    # the order of EddStorefront._select
_ZERO_DATE = "0000-00-00"
_PART = 5000
_HOUR = dt.timedelta(hours=1)
# Distinct expiration texts kept per read. EDD Recurring sets each renewal's expiration to 23:59:59
# of its day, so a year of renewals has a few hundred; an import with arbitrary times stops adding
# at this many and converts the rest each time, as it would without the memo.
_PAID_KEPT = 4096
_UNSEEN: Any = object()


class _RowReader:
    """One read's rows as :data:`~provisioner.subscriptions.SubscriptionRow` tuples, by the
    rules of :func:`subscription_from_row`, without an object per row.

    The site-local expiration becomes UTC once per distinct text in the read (every row with the
    same text gets the same time object), through a per-hour cache of the zone's offset: an
    hour whose offset is the same at its start and its end, for both folds, has no transition
    in it (two transitions within one hour do not occur in the tz database), so every time in
    it converts by that offset, exactly as :func:`site_local_to_utc` would. Hours around a
    transition, and every row whose types or values are not the plain case (ids as integers, a
    known status word, a readable non-zero date), go through :func:`subscription_from_row`
    itself (``slow``)."""

    def __init__(self, zone: dt.tzinfo, failing_grace: dt.timedelta,
                 slow: Callable[[Sequence[Any], dt.tzinfo], SubscriptionRow]) -> None:
        self.zone = zone
        self.failing_grace = failing_grace
        self.slow = slow
        self._offsets: dict[object, dt.timedelta | None] = {}
        # raw status word -> (entitlement: 0 until expiration, 1 failing, 2 never; ends; renews; the word:
        # one string object for every row that has it)
        self._statuses: dict[str, tuple[int, bool, bool, str] | None] = {}
        self._products: dict[tuple[int, int | None], str] = {}
        self._paid: dict[str, dt.datetime | None] = {}     # expiration text -> naive UTC (None: slow path)

    def _offset(self, key: object, hour: dt.datetime) -> dt.timedelta | None:
        offsets = {probe.replace(tzinfo=self.zone, fold=fold).utcoffset()
                   for probe in (hour, hour + _HOUR) for fold in (0, 1)}
        offset = offsets.pop() if len(offsets) == 1 else None
        self._offsets[key] = offset
        return offset

    def _status(self, raw: str) -> tuple[int, bool, bool, str] | None:
        word = normal_status(raw)
        info: tuple[int, bool, bool, str] | None
        if word in ENTITLED_UNTIL_EXPIRATION:
            info = (0, False, word in RENEWING, raw)
        elif word == FAILING:
            info = (1, False, False, raw)
        elif word in NEVER_ENTITLED:
            info = (2, word in ENDING, False, raw)
        else:
            info = None     # unknown: the slow path sets the problem and warns once
        self._statuses[raw] = info
        return info

    def _product(self, key: tuple[int, int | None]) -> str:
        product_id, price_id = key
        text = self._products[key] = f"{product_id}:{price_id}" if price_id else str(product_id)
        return text

    def _paid_of_local(self, local: dt.datetime) -> dt.datetime | None:
        """A naive site-local time as naive UTC (None: not the plain case, the slow path decides)."""
        if local.tzinfo is not None:
            return None
        key = local.replace(minute=0, second=0, microsecond=0)
        offset = self._offsets[key] if key in self._offsets else self._offset(key, key)
        return None if offset is None else local - offset

    def _paid_of_text(self, expiration: str) -> dt.datetime | None:
        """:meth:`_paid_of_local` of the text the database hands back; kept for the rest of the read."""
        paid: dt.datetime | None = None
        if not expiration.startswith(_ZERO_DATE):
            try:
                paid = self._paid_of_local(dt.datetime.fromisoformat(expiration))
            except (ValueError, OverflowError):
                paid = None
        if len(self._paid) < _PAID_KEPT:
            self._paid[expiration] = paid
        return paid

    def rows(self, raw_rows: Sequence[Sequence[Any]]) -> list[SubscriptionRow]:
        zone, grace, slow = self.zone, self.failing_grace, self.slow
        statuses, products, paid_of = self._statuses, self._products, self._paid
        datetime = dt.datetime
        out: list[SubscriptionRow] = []
        append = out.append
        for raw in raw_rows:
            sub_id, product_id, price_id, status, expiration, profile_id, customer_id, user_id, customer_email, \
                user_email = raw
            info = statuses[status] if status in statuses else (
                self._status(status) if type(status) is str else None)
            paid: dt.datetime | None = None
            if (info is not None and type(sub_id) is int and type(product_id) is int and type(customer_id) is int
                    and (price_id is None or type(price_id) is int) and (user_id is None or type(user_id) is int)
                    and type(customer_email) is str and (user_email is None or type(user_email) is str)
                    and type(profile_id) is str):
                if type(expiration) is str:
                    paid = paid_of.get(expiration, _UNSEEN)
                    if paid is _UNSEEN:
                        paid = self._paid_of_text(expiration)
                elif type(expiration) is datetime:
                    try:
                        paid = self._paid_of_local(expiration)
                    except OverflowError:
                        paid = None
            if paid is None:
                append(slow(raw, zone))
                continue
            mode, ends, renews, word = info     # type: ignore[misc]
            user = 0 if user_id is None else user_id
            key = (product_id, price_id)
            append((str(sub_id), True, paid if mode == 0 else paid + grace if mode == 1 else None, paid, ends,
                    user_email if user != 0 and user_email else customer_email,
                    str(user) if user > 0 else None,
                    products[key] if key in products else self._product(key),
                    word, renews, (customer_id, profile_id, user)))
        return out


def _subscription_of_row(row: SubscriptionRow) -> Subscription:
    """The :class:`Subscription` of a row :class:`_RowReader` made itself (a plain row: no problem),
    field for field what :func:`subscription_from_row` makes of the same database row."""
    customer_id, profile_id, user_id = row[SOURCE]
    until, paid = row[UNTIL], row[PAID]
    return Subscription(
        id=row[ID], customer_id=str(customer_id), product_id=row[PRODUCT], email=row[EMAIL], status=row[STATUS],
        entitled_until=None if until is None else until.replace(tzinfo=UTC), profile_id=profile_id,
        user_id=user_id, paid_through=paid.replace(tzinfo=UTC), ends_by_status=row[ENDS], problem=None,
        account_id=row[ACCOUNT], renews=row[RENEWS])

def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    args: tuple[Any, ...] = tuple(getattr(orig, "args", None) or ())
    if len(args) >= 2 and isinstance(args[0], int):  # MySQL drivers: (errno, message)
        return f"({args[0]}) {str(args[1])[:300]}"
    return str(args[0])[:300] if args else type(exc).__name__


def _integer(value: Any, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (str, bytes)) and _INTEGER.fullmatch(_text(value).strip()):
        return int(_text(value))
    raise ValueError(f"{column} {_short(value)} is not an integer")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
