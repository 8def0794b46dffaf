"""Notifications: write them to the outbox in the caller's transaction; ``outbox.py`` sends.

``enqueue(session, kind, *, settings, server=None, recipient=None, language=None, context, dedupe_key)``
adds an email row (and, when ``notify.webhook_url`` is set, a webhook copy keyed
``<dedupe_key>:webhook``) to ``provisioner_outbox`` in *the caller's* session, so the
message commits or rolls back with the state change that caused it. ``dedupe_key`` is
unique: enqueueing the same key again adds nothing (one alert per server and problem, no
floods). Subject and body are rendered now, in the recipient's language, and stored:
what was sent can always be read back. Returns how many rows were added.

Kinds, who gets them, when the lifecycle should enqueue them (with a suggested
``dedupe_key``), and their context keys (besides those filled in from ``server`` and
settings, below)::

    server_ready          customer  create finished, status Running
                                    key f"ready:{server.id}:{server.generation}"
                                    context: none
    rebuild_done          customer  rebuild finished (DNS moved to the new instance)
                                    key f"rebuilt:{server.id}:{server.generation}"
                                    context: location (optional; default current_location);
                                             wireguard (true for a WireGuard product: the
                                             mail says to switch the tunnel off and on)
    bandwidth_80          customer  the month's usage crosses 80 % of the cap
                                    key f"bandwidth_80:{server.id}:{month}"
                                    context: used_gb, cap_gb, month ("YYYY-MM");
                                             used_bytes/cap_bytes are accepted instead
    bandwidth_100         customer  usage reaches the cap
                                    key f"bandwidth_100:{server.id}:{month}"
                                    context: used_gb, cap_gb, month; suspended (bool, optional:
                                             true when cap_policy = "suspend" paused the server)
    bandwidth_reset       customer  monthly reset, for servers that were alerted or suspended
                                    key f"bandwidth_reset:{server.id}:{month}"
                                    context: month, cap_gb (or cap_bytes)
    server_destroyed      customer  destroy finished because the subscription ended
                                    key f"destroyed:{server.id}"
                                    context: none (reason optional, kept in the payload);
                                             identity_until (optional: until when a renewal
                                             gets the same .ovpn back)
    provisioning_delayed  customer  a create reaches lifecycle.error_after_attempts (status
                                    Error, retries continue), or stops for a human
                                    key f"delayed:{server.id}:{server.generation}"
                                    context: none (step optional); alerted (true only when
                                             an operator alert was queued to a channel)
    rebuild_delayed       customer  the same for a rebuild: the old server keeps serving
                                    key f"rebuild_delayed:{server.id}:{server.generation}"
                                    context: as provisioning_delayed
    needs_attention       operator  a row is marked needs_human (permanent error or
                                    max attempts)
                                    key f"attention:{server.id}:…:v{version}" (each marking)
                                    context: error (required); step, action, attempt
                                             (optional; default: the server's)
    destroy_held          operator  the planner holds a server's destroy for lack of
                                    positive evidence (once per server and reason)
                                    context: reason
    destroys_held         operator  the circuit breaker, or an implausibly thin read, holds
                                    destroys (once per episode; no server)
                                    context: reason, servers (one line each)

Filled in automatically (a context key of the same name wins): ``server_name`` (or "your
VPN server" in the customer's language while no name is allocated), ``location``
(``server.current_location``), ``dashboard_url`` (``storefront.dashboard_url``, the store's page that
shows the dashboard to a signed-in customer; ``api.public_url`` when that is not set), ``storefront_url``
(``storefront.url``), ``product_name`` (the product's name); for ``needs_attention`` also
``server_id``, ``subscription_id``, ``customer_email``, ``status``, ``action``, ``step``,
``attempts`` and ``events`` (the server's last 10 events, read from the session).

Never in a message: the ``.ovpn``, the PKI, passwords or tokens. Unknown context keys are
refused (ValueError) so nothing slips in by accident, and any value that looks like key
material (PEM or OpenVPN inline blocks) is refused too. The customer gets the dashboard
link and downloads the profile there, behind their login.

Recipients: customer kinds go to ``recipient`` or ``server.user_email``; ``needs_attention``
goes to ``notify.operator_email``. With no address there is no email row (WARNING), only
the webhook copy if one is configured. Language: ``language`` or ``server.language`` or
``notify.default_language``, falling back to English when there is no template file;
operator alerts use ``notify.default_language``. Templates: ``provisioner/templates/<lang>.json``
(``string.Template`` ``$name`` placeholders; a body is a list of lines).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from provisioner.models import EMAIL, PENDING, WEBHOOK, OutboxMessage, Server, ServerEvent, utcnow
from provisioner.settings.schema import Settings

log = logging.getLogger(__name__)

CUSTOMER, OPERATOR = "customer", "operator"
LAST_EVENTS = 10
# PEM blocks, an .ovpn's inline keys, a WireGuard .conf's or wg0.conf's key lines.
_KEY_MATERIAL = re.compile(r"-----BEGIN |<(ca|cert|key|tls-auth|tls-crypt|tls-crypt-v2|secret)>"
                           r"|(PrivateKey|PresharedKey)\s*=\s*[A-Za-z0-9+/]{42,43}=", re.I)


@dataclass(frozen=True)
class Kind:
    audience: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    variant: str | None = None     # a true context value of this name picks "body_<variant>"


KINDS: dict[str, Kind] = {
    "server_ready": Kind(CUSTOMER),
    "rebuild_done": Kind(CUSTOMER, optional=("location", "wireguard"), variant="wireguard"),
    "bandwidth_80": Kind(CUSTOMER, ("used_gb", "cap_gb", "month"), ("percent",)),
    "bandwidth_100": Kind(CUSTOMER, ("used_gb", "cap_gb", "month"), ("percent", "suspended"), variant="suspended"),
    "bandwidth_reset": Kind(CUSTOMER, ("month", "cap_gb")),
    "server_destroyed": Kind(CUSTOMER, optional=("reason", "identity_until"), variant="identity_until"),
    "provisioning_delayed": Kind(CUSTOMER, optional=("step", "alerted"), variant="alerted"),
    "rebuild_delayed": Kind(CUSTOMER, optional=("step", "alerted"), variant="alerted"),
    "needs_attention": Kind(OPERATOR, ("error",), ("step", "action", "attempt")),
    "destroy_held": Kind(OPERATOR, ("reason",)),
    "destroys_held": Kind(OPERATOR, ("reason", "servers")),
}
_BYTES_ALIASES = {"used_bytes": "used_gb", "cap_bytes": "cap_gb"}
_AUTO = ("server_name", "location", "dashboard_url", "storefront_url", "product_name")


@lru_cache(maxsize=16)
def templates(language: str) -> dict[str, Any] | None:
    if not re.fullmatch(r"[a-z]{2}", language):
        return None
    try:
        text = resources.files("provisioner").joinpath("templates", f"{language}.json").read_text("utf-8")
    except (FileNotFoundError, OSError):
        return None
    data = json.loads(text)
    return data if isinstance(data, dict) else None


def pick_language(wanted: str | None, default: str) -> str:
    for lang in (wanted, default, "en"):
        if lang and templates(lang.lower()[:2]) is not None:
            return lang.lower()[:2]
    raise RuntimeError("provisioner/templates/en.json is missing")


def render(kind: str, language: str, values: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of one message kind in one language (the language must exist)."""
    spec = KINDS[kind]
    tpl = templates(language) or {}
    entry = tpl[kind]
    body_lines = entry["body"]
    if spec.variant and values.get(spec.variant) and f"body_{spec.variant}" in entry:
        body_lines = entry[f"body_{spec.variant}"]
    lines = list(body_lines) + (list(tpl.get("_signature", [])) if spec.audience == CUSTOMER else [])
    text = {k: "" if v is None else str(v) for k, v in values.items()}
    try:
        subject = Template(entry["subject"]).substitute(text)
        body = Template("\n".join(lines)).substitute(text)
    except KeyError as exc:
        raise ValueError(f"template {language}/{kind} needs context key {exc.args[0]!r}") from None
    return " ".join(subject.split()), body + "\n"


def enqueue(session: Session, kind: str, *, settings: Settings, server: Server | None = None,
            recipient: str | None = None, language: str | None = None, context: dict[str, Any], dedupe_key: str,
            now: dt.datetime | None = None) -> int:
    """Queue ``kind`` in the caller's transaction; return how many rows were added (0 = deduped).

    ``settings`` give the addresses, links and languages."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}; known: {', '.join(KINDS)}")
    if not dedupe_key or len(dedupe_key) > 180:
        raise ValueError("dedupe_key must be 1-180 characters")
    spec = KINDS[kind]
    now = now or utcnow()
    ctx = _checked_context(kind, spec, context)
    if server is not None and server.id is None:
        session.flush()        # a new row: its id goes into the message and the payload
    lang = pick_language(settings.notify.default_language if spec.audience == OPERATOR
                         else (language or (server.language if server is not None else None)),
                         settings.notify.default_language)
    values = _values(session, spec, server, settings, lang, ctx)
    subject, body = render(kind, lang, values)
    payload = {"kind": kind, "language": lang, "context": _jsonable(values),
               "server": _server_info(server)}
    if spec.audience == OPERATOR:
        to = settings.notify.operator_email
    else:
        to = recipient or (server.user_email if server is not None else "")
    base = {"kind": kind, "language": lang, "subject": subject[:255], "body": body, "payload": payload,
            "server_id": server.id if server is not None else None, "status": PENDING, "attempts": 0,
            "next_attempt_at": now, "created_at": now}
    added = 0
    if to:
        added += _insert_once(session, {**base, "channel": EMAIL, "recipient": to[:191], "dedupe_key": dedupe_key})
    else:
        log.warning("notification %s (%s) has no email recipient%s; %s", kind, dedupe_key,
                    " (notify.operator_email is empty)" if spec.audience == OPERATOR else "",
                    "webhook copy only" if settings.notify.webhook_url else "not sent")
    if settings.notify.webhook_url:
        # only the host: a webhook URL often carries a token in its path or query
        where = urlsplit(settings.notify.webhook_url).netloc[:191]
        added += _insert_once(session, {**base, "channel": WEBHOOK, "recipient": where,
                                        "dedupe_key": f"{dedupe_key}:webhook"})
    return added


def _checked_context(kind: str, spec: Kind, context: dict[str, Any]) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for key, value in context.items():
        if key in _BYTES_ALIASES:
            key, value = _BYTES_ALIASES[key], _gb(value)
        if key not in spec.required and key not in spec.optional and key not in _AUTO:
            raise ValueError(f"notification {kind}: context key {key!r} is not allowed "
                             f"(allowed: {', '.join(spec.required + spec.optional + _AUTO)})")
        if not isinstance(value, str | int | float | bool | type(None)):
            raise ValueError(f"notification {kind}: context {key!r} must be a plain value")
        if isinstance(value, str) and _KEY_MATERIAL.search(value):
            raise ValueError(f"notification {kind}: context {key!r} looks like key material; refusing")
        ctx[key] = value
    missing = [k for k in spec.required if k not in ctx]
    if missing:
        raise ValueError(f"notification {kind}: missing context key(s) {', '.join(missing)}")
    return ctx


def _gb(value: Any) -> str:
    gb = float(value) / 1000**3
    return f"{gb:.0f}" if gb >= 100 or gb == int(gb) else f"{gb:.1f}"


def _values(session: Session, spec: Kind, server: Server | None, settings: Settings, lang: str,
            ctx: dict[str, Any]) -> dict[str, Any]:
    tpl = templates(lang) or {}
    product = settings.products.get(server.product_id) if server is not None else None
    values: dict[str, Any] = {
        "server_name": (server.server_name if server is not None else None) or tpl.get("_unnamed_server", ""),
        "location": (server.current_location if server is not None else None) or "-",
        "dashboard_url": settings.storefront.dashboard_url or settings.api.public_url,
        "storefront_url": settings.storefront.url,
        "product_name": product.name if product is not None else "VPN",
    }
    for key in spec.required + spec.optional:
        values.setdefault(key, "")
    if spec.audience == OPERATOR:
        values.update({
            "server_id": server.id if server is not None else "-",
            "subscription_id": server.subscription_id if server is not None else "-",
            "customer_email": server.user_email if server is not None else "-",
            "status": server.status if server is not None else "-",
            "action": (server.action if server is not None else None) or "-",
            "step": (server.step if server is not None else None) or "-",
            "attempts": server.attempts if server is not None else 0,
            "events": _last_events(session, server),
        })
        if "attempt" in ctx:
            values["attempts"] = ctx["attempt"]
    values.update({k: v for k, v in ctx.items() if v is not None or k not in _AUTO})
    return values


def _last_events(session: Session, server: Server | None) -> str:
    if server is None or server.id is None:
        return "(none)"
    rows = list(session.scalars(select(ServerEvent).where(ServerEvent.server_id == server.id)
                                .order_by(ServerEvent.at.desc(), ServerEvent.id.desc()).limit(LAST_EVENTS)))
    if not rows:
        return "(none)"
    return "\n".join(f"  {e.at:%Y-%m-%d %H:%M:%S}Z {e.actor} {e.what} {e.outcome}"
                     f"{': ' + e.detail[:300] if e.detail else ''}" for e in reversed(rows))


def _server_info(server: Server | None) -> dict[str, Any] | None:
    if server is None:
        return None
    return {"id": server.id, "name": server.server_name, "subscription_id": server.subscription_id,
            "email": server.user_email, "status": server.status, "location": server.current_location}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, str | int | float | bool | type(None)) else str(v) for k, v in values.items()}


def _insert_once(session: Session, values: dict[str, Any]) -> int:
    """Insert unless the dedupe_key exists; a concurrent twin is absorbed by the database."""
    found = session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == values["dedupe_key"]))
    if found is not None:
        return 0
    dialect = session.get_bind().dialect.name
    # Each dialect's module imported on use: a worker on SQLite never loads MySQL's (~1 MB resident).
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt_lite = sqlite_insert(OutboxMessage).values(**values)
        session.execute(stmt_lite.on_conflict_do_nothing(index_elements=["dedupe_key"]))
    elif dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        stmt = mysql_insert(OutboxMessage).values(**values)
        session.execute(stmt.on_duplicate_key_update(dedupe_key=stmt.inserted.dedupe_key))
    else:
        session.execute(insert(OutboxMessage).values(**values))
    return 1
