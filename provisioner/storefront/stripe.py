"""Subscriptions from Stripe Billing, kept in ``provisioner_stripe_subscriptions``.

Verified webhook events (``dashboard_api/stripe_webhook.py``) write the table through
:meth:`StripeStorefront.handle_event`; the planner reads it through :meth:`read`, which
never waits on Stripe unless a row has visibly gone stale (below).

Entitlement (``Subscription.entitled_until``):

=====================================================  =====================================
status                                                  entitled until
=====================================================  =====================================
``active``, ``trialing``                                ``current_period_end`` (for trialing,
                                                        the later of it and ``trial_end``)
                                                        + ``CLOCK_SKEW``
``past_due``                                            ``current_period_end`` +
                                                        ``stripe.past_due_grace_days``
``canceled``, ``unpaid``, ``incomplete_expired``,       never (``None``); these *end* the
``paused``                                              subscription (evidence for a destroy)
``incomplete``                                          never; not ended either
anything else                                           never; no evidence either way (held)
=====================================================  =====================================

Status words are compared case-insensitively. The paid-through date a destroy waits for is
``current_period_end``; a row without one is held, never destroyed.

``cancel_at_period_end`` needs no rule of its own: Stripe keeps such a subscription
``active`` until the period ends, then sends ``customer.subscription.deleted`` (status
``canceled``). ``past_due`` means Stripe is still retrying the card; access really ends
when Stripe gives up and moves the subscription to ``canceled`` or ``unpaid`` — the grace
after the period end is only a backstop. ``CLOCK_SKEW`` (10 minutes) absorbs the
difference between Stripe's clock and ours and the seconds between a renewal and its
``customer.subscription.updated`` event.

Stale rows: an ``active``/``trialing``/``past_due`` row whose window has passed and that
has heard nothing from Stripe since, means a missed webhook (a renewal, or the final
``deleted``), not an ended subscription. With ``stripe.api_key`` set, :meth:`read`
re-fetches such rows (at most ``MAX_REFRESH_PER_READ`` per read) and raises
:class:`StorefrontUnavailable` if Stripe cannot answer, so nothing is destroyed on a guess.
Without an api_key the row lapses at its window's end (webhook-only mode trusts delivery).

Ordering: Stripe delivers at least once and in any order. Each stored state carries the
Stripe time it is *as of* (``last_event_created``): an event older than that is recorded
and ignored; ``customer.subscription.created`` never overwrites an existing row of the
same second; a terminal status (``canceled``, ``incomplete_expired``) is never replaced by
a live one. With an api_key every subscription or invoice event re-fetches the
subscription, and the fetched state (as of the fetch) is stored instead of the payload.

An entitled subscription with no known email is held back from :meth:`read` (with one
WARNING) until an email arrives; see :mod:`provisioner.storefront.stripe_objects` for
where emails come from. An ended one is returned regardless, as evidence.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import stripe
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.models import StripeSubscription, utcnow
from provisioner.storefront.stripe_objects import (
    INVOICE_EVENTS,
    SUBSCRIPTION_EVENTS,
    SubscriptionState,
    as_dict,
    customer_id_of,
    invoice_email,
    invoice_subscription_id,
    parse_subscription,
    ts,
)
from provisioner.subscriptions import StorefrontUnavailable, Subscription

if TYPE_CHECKING:
    from provisioner.settings.schema import Settings

log = logging.getLogger(__name__)

CLOCK_SKEW = dt.timedelta(minutes=10)
MAX_REFRESH_PER_READ = 25
HTTP_TIMEOUT_SECONDS = 8.0   # below Stripe's webhook timeout: a fetch never makes Stripe redeliver

UNTIL_PERIOD_END = frozenset({"active", "trialing"})
PAST_DUE = "past_due"
TERMINAL = frozenset({"canceled", "incomplete_expired"})
ENDED_AT_STRIPE = frozenset({"canceled", "incomplete_expired", "unpaid", "paused"})
LIVE_AT_STRIPE = frozenset({"active", "trialing", "past_due", "incomplete"})
NEVER_ENTITLED = ENDED_AT_STRIPE | {"incomplete"}
KNOWN = ENDED_AT_STRIPE | LIVE_AT_STRIPE


def normal_status(word: str) -> str:
    return word.strip().lower()


class StripeApiError(Exception):
    """Stripe could not be asked (network, auth, 5xx, rate limit). No key in the message."""


class StripeNotFound(StripeApiError):
    """Stripe does not know this subscription (wrong account or mode?)."""


def make_client(settings: Settings) -> stripe.StripeClient | None:
    if not settings.stripe.api_key:
        return None
    return stripe.StripeClient(
        settings.stripe.api_key,
        base_addresses={"api": settings.stripe.api_base},
        http_client=stripe.RequestsClient(timeout=HTTP_TIMEOUT_SECONDS),
        max_network_retries=0,
    )


class StripeStorefront:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self._grace = dt.timedelta(days=settings.stripe.past_due_grace_days)
        self._products = frozenset(settings.products)
        self._client = make_client(settings)
        self._warned: set[tuple[str, str]] = set()

    # --- the planner's side ----------------------------------------------------------------

    def change_marker(self) -> object | None:
        return None  # the webhook asks for a planning pass itself (planning.request)

    def read(self, now: dt.datetime) -> list[Subscription]:
        rows = self._rows()
        stale = [r for r in rows if self._is_stale(r, now)]
        if stale and self._client is not None:
            self._refresh(stale, now)
            rows = self._rows()
        out: list[Subscription] = []
        for row in rows:
            sub = self._subscription(row, now)
            if sub is not None:
                out.append(sub)
        return out

    def _rows(self) -> list[StripeSubscription]:
        try:
            with self._sessions() as s:
                return list(s.scalars(select(StripeSubscription).order_by(StripeSubscription.id)))
        except SQLAlchemyError as exc:
            raise StorefrontUnavailable(
                f"stripe storefront: cannot read provisioner_stripe_subscriptions ({type(exc).__name__})") from None

    def entitled_until(self, row: StripeSubscription) -> dt.datetime | None:
        status = normal_status(row.status)
        if row.current_period_end is None:
            return None
        if status in UNTIL_PERIOD_END:
            end = row.current_period_end
            if status == "trialing" and row.trial_end is not None:
                end = max(end, row.trial_end)
            return end + CLOCK_SKEW
        if status == PAST_DUE:
            return row.current_period_end + self._grace
        return None

    def _is_stale(self, row: StripeSubscription, now: dt.datetime) -> bool:
        if normal_status(row.status) not in UNTIL_PERIOD_END | {PAST_DUE}:
            return False
        until = self.entitled_until(row)   # None (no period end): held back by _subscription instead
        return until is not None and until <= now and row.updated_at < until

    def _refresh(self, stale: list[StripeSubscription], now: dt.datetime) -> None:
        batch = stale[:MAX_REFRESH_PER_READ]
        fetched: list[dict[str, Any]] = []
        for row in batch:
            try:
                fetched.append(self.fetch(row.id))
            except StripeApiError as exc:
                raise StorefrontUnavailable(
                    f"stripe storefront: subscription {row.id} looks lapsed without an ending event and Stripe "
                    f"could not confirm it: {exc}") from None
        try:
            states = [self._parse(obj) for obj in fetched]
        except ValueError as exc:
            raise StorefrontUnavailable(f"stripe storefront: Stripe returned an unreadable subscription: {exc}") \
                from None
        try:
            with self._sessions.begin() as s:
                for state in states:
                    self._apply(s, state, now, "stripe.refresh", now, fetched=True)
        except SQLAlchemyError as exc:
            raise StorefrontUnavailable(f"stripe storefront: cannot store refreshed subscriptions "
                                        f"({type(exc).__name__})") from None
        log.info("stripe storefront: refreshed %d lapsed subscription(s) from Stripe", len(batch))
        if len(stale) > len(batch):
            raise StorefrontUnavailable(
                f"stripe storefront: {len(stale) - len(batch)} more lapsed subscriptions to confirm with Stripe "
                "(webhooks missed?); continuing next pass")

    def _subscription(self, row: StripeSubscription, now: dt.datetime) -> Subscription | None:
        if not row.status:
            return None           # only an invoice was seen so far
        status = normal_status(row.status)
        problem = None
        if status not in KNOWN:
            problem = f"unknown status {row.status!r}"
            self._warn_once(row.id, "status", "stripe subscription %s has unknown status %r; neither entitled nor "
                            "ended: its server is held", row.id, row.status)
        elif row.current_period_end is None and status not in NEVER_ENTITLED:
            problem = "no current_period_end"
            self._warn_once(row.id, "period", "stripe subscription %s is %s but has no period end; held back",
                            row.id, row.status)
        until = None if problem else self.entitled_until(row)
        if until is not None and now < until and not row.email:
            self._warn_once(row.id, "email", "stripe subscription %s entitles but has no email yet; held back "
                            "until an invoice or customer email arrives", row.id)
            return None
        paid = row.current_period_end
        if row.status == "trialing" and row.trial_end is not None and paid is not None:
            paid = max(paid, row.trial_end)
        return Subscription(id=row.id, customer_id=row.customer_id, product_id=row.price_id, email=row.email,
                            status=row.status, entitled_until=until, profile_id=row.id, paid_through=paid,
                            ends_by_status=status in ENDED_AT_STRIPE, problem=problem,
                            account_id=row.customer_id or None,
                            renews=row.status in UNTIL_PERIOD_END and not row.cancel_at_period_end)

    def _warn_once(self, sub_id: str, what: str, msg: str, *args: Any) -> None:
        if (sub_id, what) not in self._warned:
            self._warned.add((sub_id, what))
            log.warning(msg, *args)

    # --- the webhook's side ------------------------------------------------------------------

    def handle_event(self, session: Session, event: Any, now: dt.datetime | None = None) -> str:
        """Apply one verified event in the caller's transaction; return the outcome to record.

        Network first, writes second: a Stripe fetch happens before this method writes
        anything, so no database write lock is held across it.
        """
        now = now or utcnow()
        ev = as_dict(event)
        etype = str(ev.get("type", ""))
        created = ts(ev.get("created")) or now
        obj = ev.get("data", {}).get("object") if isinstance(ev.get("data"), dict) else None
        if not isinstance(obj, dict):
            return "ignored: no data.object"
        try:
            return self._handle(session, etype, created, obj, now)
        except ValueError as exc:      # a verified event whose object we cannot read
            log.warning("stripe event %s (%s) ignored: %s", ev.get("id"), etype, exc)
            return f"ignored: {str(exc)[:120]}"

    def _handle(self, session: Session, etype: str, created: dt.datetime, obj: dict[str, Any],
                now: dt.datetime) -> str:
        if etype in SUBSCRIPTION_EVENTS:
            fetched = self._try_fetch(str(obj.get("id", "")))
            if fetched is not None:
                return self._apply(session, self._parse(fetched), max(now, created), etype, now, fetched=True)
            return self._apply(session, self._parse(obj), created, etype, now)
        if etype in INVOICE_EVENTS:
            sub_id = invoice_subscription_id(obj)
            if not sub_id:
                return "ignored: invoice without a subscription"
            fetched = self._try_fetch(sub_id)
            if fetched is not None:
                outcome = self._apply(session, self._parse(fetched), max(now, created), etype, now, fetched=True)
                self._fill_contact(session, sub_id, invoice_email(obj), customer_id_of(obj), now)
                return outcome
            return self._fill_contact(session, sub_id, invoice_email(obj), customer_id_of(obj), now)
        return f"ignored: {etype[:64]}"

    def _parse(self, obj: dict[str, Any]) -> SubscriptionState:
        return parse_subscription(obj, self._products)

    def _apply(self, session: Session, state: SubscriptionState, as_of: dt.datetime, etype: str,
               now: dt.datetime, *, fetched: bool = False) -> str:
        row = session.get(StripeSubscription, state.id)
        if row is None:
            row = StripeSubscription(id=state.id)
            session.add(row)
        elif row.status in TERMINAL and state.status not in TERMINAL:
            return f"stale: {state.id} already {row.status}"
        elif row.last_event_created is not None:
            if as_of < row.last_event_created:
                return f"stale: older than the stored state of {state.id}"
            if etype == "customer.subscription.created" and row.status and not fetched:
                return f"stale: {state.id} is past its created event"
        row.customer_id = state.customer_id or row.customer_id or ""
        row.email = state.email or row.email or ""
        row.price_id = state.price_id or row.price_id or ""
        row.status = state.status
        row.cancel_at_period_end = state.cancel_at_period_end
        row.current_period_end = state.current_period_end
        row.ended_at = state.ended_at
        row.trial_end = state.trial_end
        row.object_created = state.created
        row.last_event_created = as_of
        row.updated_at = now
        return f"applied{' from the API' if fetched else ''}: {state.id} {state.status}"

    def _fill_contact(self, session: Session, sub_id: str, email: str, customer_id: str, now: dt.datetime) -> str:
        """Invoice events carry no subscription status: keep what they do carry."""
        row = session.get(StripeSubscription, sub_id)
        if row is None:
            # a placeholder: read() skips it until a subscription event gives it a status
            row = StripeSubscription(id=sub_id, status="")
            session.add(row)
        changed = False
        if email and not row.email:
            row.email, changed = email, True
        if customer_id and not row.customer_id:
            row.customer_id, changed = customer_id, True
        if changed:
            row.updated_at = now
        return f"recorded: {sub_id}{' email' if changed else ''}"

    # --- the Stripe API ------------------------------------------------------------------------

    def fetch(self, sub_id: str) -> dict[str, Any]:
        """The subscription as Stripe has it now, customer expanded, as a plain dict."""
        if self._client is None:
            raise StripeApiError("no stripe.api_key configured")
        try:
            obj = self._client.v1.subscriptions.retrieve(sub_id, params={"expand": ["customer"]})
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                raise StripeNotFound(f"Stripe does not know {sub_id} (is stripe.api_key for the same account and "
                                     "mode as the webhook?)") from None
            raise StripeApiError(f"{type(exc).__name__} (HTTP {exc.http_status})") from None
        except stripe.StripeError as exc:
            raise StripeApiError(f"{type(exc).__name__} (HTTP {exc.http_status})") from None
        return as_dict(obj)

    def _try_fetch(self, sub_id: str) -> dict[str, Any] | None:
        if self._client is None or not sub_id.startswith("sub_"):
            return None
        try:
            return self.fetch(sub_id)
        except StripeApiError as exc:
            log.warning("stripe: could not re-fetch %s (%s); using the event's own payload", sub_id, exc)
            return None

    def cross_check_ended(self, sub_id: str) -> bool | None:
        """Does Stripe say ``sub_id`` ended? True / False, or None when it cannot tell.

        Ended: ``canceled``, ``incomplete_expired``, ``unpaid``, ``paused``. Not ended:
        ``active``, ``trialing``, ``past_due`` (Stripe still retrying), ``incomplete``.
        None: no api_key, Stripe unreachable, unknown id, or an unknown status word.
        """
        if self._client is None or not sub_id.startswith("sub_"):
            return None
        try:
            status = str(self.fetch(sub_id).get("status", ""))
        except StripeApiError as exc:
            log.warning("stripe cross-check of %s failed: %s", sub_id, exc)
            return None
        if status in ENDED_AT_STRIPE:
            return True
        if status in LIVE_AT_STRIPE:
            return False
        log.warning("stripe cross-check of %s: unknown status %r", sub_id, status)
        return None
