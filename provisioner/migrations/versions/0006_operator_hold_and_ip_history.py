"""an operator's hold on a server; the history of every address a server held

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 16:30:00

- ``provisioner_servers.operator_hold_at`` / ``operator_hold_reason``: a forced destroy by an
  operator keeps the server down until ``provisioner release`` (distinct from ``paused``).
- ``provisioner_ip_history``: who held which address when. Filled from what the audit trail
  already knows: a ``*.boot`` "instance X is up at IP" event opens a holding; the instance's
  deletion (``rebuild.retire`` "deleted old instance X", ``create.boot``/``rebuild.boot``
  "instance X disappeared", ``destroy.instances``) closes it. A live server whose address no
  event explains gets a holding from its last rebuild (or creation) on. The customer fields
  are copied from the server row as it is now (the best the old data knows).

Downgrade drops both; the audit trail they were derived from is untouched.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_UP = re.compile(r"^instance (\S+) is up at (\S+)$")
_GONE = re.compile(r"^instance (\S+) disappeared")
_RETIRED = re.compile(r"^deleted old instance (\S+)$")


def upgrade() -> None:
    with op.batch_alter_table('provisioner_servers') as batch:
        batch.add_column(sa.Column('operator_hold_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('operator_hold_reason', sa.Text(), nullable=True))
    history = op.create_table(
        'provisioner_ip_history',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('ip', sa.String(length=45), nullable=False),
        sa.Column('server_id', sa.Integer(), nullable=False),
        sa.Column('server_name', sa.String(length=191), nullable=True),
        sa.Column('subscription_id', sa.String(length=64), nullable=False),
        sa.Column('customer_id', sa.String(length=64), nullable=False),
        sa.Column('user_email', sa.String(length=191), nullable=False),
        sa.Column('instance_id', sa.String(length=64), nullable=True),
        sa.Column('held_from', sa.DateTime(), nullable=False),
        sa.Column('held_until', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['server_id'], ['provisioner_servers.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_provisioner_ip_history_ip', 'provisioner_ip_history', ['ip', 'held_from'])
    op.create_index('ix_provisioner_ip_history_server', 'provisioner_ip_history', ['server_id', 'held_until'])
    op.create_index('ix_provisioner_ip_history_until', 'provisioner_ip_history', ['held_until'])
    rows = _history_from_audit_trail(op.get_bind())
    if rows:
        op.bulk_insert(history, rows)


def downgrade() -> None:
    op.drop_table('provisioner_ip_history')  # its indexes go with it (MariaDB refuses to drop the FK's first)
    if op.get_bind().dialect.name == 'sqlite':
        # Not batch mode: it copies the table and drops the original, which the audit trail's
        # foreign key forbids (foreign_keys=ON cannot change inside the migration's transaction).
        # SQLite drops a plain column in place since 3.35.
        op.execute('ALTER TABLE provisioner_servers DROP COLUMN operator_hold_reason')
        op.execute('ALTER TABLE provisioner_servers DROP COLUMN operator_hold_at')
    else:
        op.drop_column('provisioner_servers', 'operator_hold_reason')
        op.drop_column('provisioner_servers', 'operator_hold_at')


def _history_from_audit_trail(conn: sa.Connection) -> list[dict[str, Any]]:
    servers = sa.table('provisioner_servers', *(sa.column(c) for c in (
        'id', 'server_name', 'subscription_id', 'customer_id', 'user_email', 'server_ip', 'instance_id', 'status',
        'created_at', 'last_rebuilt_at', 'destroyed_at')))
    events = sa.table('provisioner_server_events', *(sa.column(c) for c in (
        'id', 'server_id', 'at', 'what', 'outcome', 'detail')))
    by_id = {r.id: r for r in conn.execute(sa.select(servers))}
    trail = conn.execute(
        sa.select(events.c.server_id, events.c.at, events.c.what, events.c.detail)
        .where(events.c.outcome == 'ok', events.c.server_id.is_not(None),
               events.c.what.in_(('create.boot', 'rebuild.boot', 'rebuild.retire', 'destroy.instances')))
        .order_by(events.c.server_id, events.c.at, events.c.id))
    out: list[dict[str, Any]] = []
    open_: dict[int, list[dict[str, Any]]] = {}

    def close(server_id: int, at: dt.datetime, instance_id: str | None = None) -> None:
        keep = []
        for h in open_.get(server_id, []):
            if instance_id is None or h['instance_id'] == instance_id:
                h['held_until'] = at
            else:
                keep.append(h)
        open_[server_id] = keep

    for server_id, at, what, detail in trail:
        server = by_id.get(server_id)
        if server is None:
            continue
        at = _when(at)
        detail = detail or ''
        if what.endswith('.boot'):
            up, gone = _UP.match(detail), _GONE.match(detail)
            if up:
                instance_id, ip = up.groups()
                if not any(h['instance_id'] == instance_id and h['ip'] == ip for h in open_.get(server_id, [])):
                    holding = _holding(server, ip, instance_id, at)
                    open_.setdefault(server_id, []).append(holding)
                    out.append(holding)
            elif gone:
                close(server_id, at, gone.group(1))
        elif what == 'rebuild.retire':
            retired = _RETIRED.match(detail)
            if retired:
                close(server_id, at, retired.group(1))
        else:  # destroy.instances: every instance of the server is gone
            close(server_id, at)
    for server in by_id.values():
        still = open_.get(server.id, [])
        if server.status == 'Destroyed':
            close(server.id, _naive(server.destroyed_at) or _when(server.created_at))
        elif server.server_ip and not any(h['ip'] == server.server_ip for h in still):
            since = max(_when(server.created_at), _naive(server.last_rebuilt_at) or _when(server.created_at))
            out.append(_holding(server, server.server_ip, server.instance_id, since))
    return out


def _holding(server: Any, ip: str, instance_id: str | None, at: dt.datetime) -> dict[str, Any]:
    return {'ip': ip, 'server_id': server.id, 'server_name': server.server_name,
            'subscription_id': server.subscription_id, 'customer_id': server.customer_id,
            'user_email': server.user_email, 'instance_id': instance_id, 'held_from': at, 'held_until': None}


def _when(value: Any) -> dt.datetime:
    when = _naive(value)
    if when is None:
        raise ValueError("a required timestamp is missing")
    return when


def _naive(value: Any) -> dt.datetime | None:
    """SQLite hands DATETIME back as text through a bare ``sa.column``; both as naive UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=None)
