"""``POST /webhooks/stripe``: verified Stripe events into the Stripe storefront's table.

1. 503 ``webhook_not_configured`` while ``stripe.webhook_secrets`` is empty.
2. The raw body (at most 1 MB, else 413) is verified with
   ``stripe.WebhookSignature.verify_header`` against each configured secret in turn (rotation:
   the old and the new secret both pass). A missing or bad signature, a timestamp older
   than ``stripe.webhook_tolerance_seconds`` or further than that in the future, or a signed
   body that is not a JSON object of an event, is 400 and nothing is stored.
3. An event id seen before is 200 ``{"received": true, "duplicate": true}`` and changes
   nothing. Otherwise the event row and its effect on the subscription commit in one
   transaction; 200 ``{"received": true, "duplicate": false, "outcome": …}``.
4. A database failure is 503 ``storage_unavailable`` (Stripe retries later; nothing was
   half-written).

Errors are ``{"error": {"code": …, "message": …}}``. Blocking work (database, a Stripe
re-fetch) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Any

import stripe
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from provisioner import planning
from provisioner.models import StripeEvent
from provisioner.storefront.stripe import StripeStorefront
from provisioner.storefront.stripe_objects import as_dict, ts
from provisioner.wiring import App

log = logging.getLogger(__name__)

router = APIRouter()

MAX_BODY_BYTES = 1024 * 1024


def get_app(request: Request) -> App:
    app: App = request.app.state.provisioner
    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _read_body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than MAX_BODY_BYTES (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def verify(body: bytes, signature: str, secrets: list[str], tolerance: int,
           now: float | None = None) -> tuple[dict[str, Any] | None, JSONResponse | None]:
    """The verified event as a plain dict, or the 400 to answer. Tries every secret (rotation).

    Stripe's own check refuses only timestamps *older* than the tolerance; a signature dated
    further than the tolerance in the future is refused here too (a replay prepared ahead).
    The signed body must be a JSON object that is an event (a list, a string, a number: 400).
    """
    stamp = _timestamp(signature)
    if stamp is None:
        return None, _error(400, "bad_signature", "the Stripe-Signature header has no timestamp")
    if tolerance and stamp > (time.time() if now is None else now) + tolerance:
        return None, _error(400, "future_signature", "the signature timestamp is in the future beyond the tolerance")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, _error(400, "bad_payload", "the body is not UTF-8")
    stale, verified = False, False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance)
            verified = True
            break
        except stripe.SignatureVerificationError as exc:
            stale = stale or "tolerance" in str(exc)
    if not verified:
        if stale:
            return None, _error(400, "stale_signature", "the signature timestamp is outside the tolerance window")
        return None, _error(400, "bad_signature", "the Stripe-Signature header does not match any webhook secret")
    try:
        event = json.loads(payload)
    except ValueError:
        return None, _error(400, "bad_payload", "the body is not a Stripe event")
    if not isinstance(event, dict) or event.get("object") != "event":
        return None, _error(400, "bad_payload", "the body is not a Stripe event (a JSON object with object=event)")
    return event, None


def _timestamp(signature: str) -> int | None:
    for part in signature.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            return int(value) if value.isdigit() else None
    return None


def _storefront(request: Request, app: App) -> StripeStorefront:
    cached = getattr(request.app.state, "stripe_storefront", None)
    if cached is None or cached[0] is not app:
        cached = (app, StripeStorefront(app.sessions, app.settings))
        request.app.state.stripe_storefront = cached
    storefront: StripeStorefront = cached[1]
    return storefront


def process(app: App, storefront: StripeStorefront, event: Any) -> JSONResponse:
    ev = as_dict(event)
    event_id = str(ev.get("id", ""))
    if not event_id:
        return _error(400, "bad_payload", "the event has no id")
    now = app.clock()
    try:
        with app.sessions() as s:
            if s.get(StripeEvent, event_id) is not None:
                return JSONResponse({"received": True, "duplicate": True})
        with app.sessions.begin() as s:
            outcome = storefront.handle_event(s, ev, now)
            s.add(StripeEvent(id=event_id, type=str(ev.get("type", ""))[:64], created=ts(ev.get("created")) or now,
                              received_at=now, processed_at=now, outcome=outcome[:191]))
            # the worker plans within seconds instead of at its next tick (a new sale, a cancellation)
            planning.request(s, now, f"stripe {ev.get('type', 'event')}")
            s.flush()
    except IntegrityError:
        # a concurrent delivery of the same event won the race, or (rarely) of another event
        # about the same new subscription: only the first is a duplicate; the second must be retried
        return _after_conflict(app, event_id)
    except SQLAlchemyError as exc:
        log.error("stripe webhook %s: database error %s", event_id, type(exc).__name__)
        return _error(503, "storage_unavailable", "the event could not be stored; retry later")
    log.info("stripe webhook %s %s: %s", event_id, ev.get("type"), outcome)
    return JSONResponse({"received": True, "duplicate": False, "outcome": outcome})


def _after_conflict(app: App, event_id: str) -> JSONResponse:
    try:
        with app.sessions() as s:
            if s.get(StripeEvent, event_id) is not None:
                return JSONResponse({"received": True, "duplicate": True})
    except SQLAlchemyError as exc:
        log.warning("stripe webhook %s: database error %s after a conflict", event_id, type(exc).__name__)
    return _error(503, "conflict_retry", "a concurrent update got in the way; retry later")


@router.post("/webhooks/stripe")
async def stripe_webhook(request: Request, app: Annotated[App, Depends(get_app)]) -> JSONResponse:
    settings = app.settings.stripe
    if not settings.webhook_secrets:
        return _error(503, "webhook_not_configured", "stripe.webhook_secrets is empty: the endpoint is off")
    body = await _read_body(request)
    if body is None:
        return _error(413, "payload_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
    signature = request.headers.get("stripe-signature", "")
    if not signature:
        return _error(400, "missing_signature", "no Stripe-Signature header")
    event, problem = verify(body, signature, list(settings.webhook_secrets), settings.webhook_tolerance_seconds)
    if problem is not None:
        log.warning("stripe webhook rejected with HTTP %d (signature or payload)", problem.status_code)
        return problem
    return await run_in_threadpool(process, app, _storefront(request, app), event)

