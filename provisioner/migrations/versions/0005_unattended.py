"""running unattended: destroy evidence and holds, the breaker's window, kept identities,
storefront accounts, honest action ages and alerts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00

New columns on ``provisioner_servers`` and what existing rows get:

- ``account_id``: the storefront account that owns the subscription (a dashboard token's
  ``sub`` must name it). Rows of the Stripe storefront take their Stripe customer id (from
  ``provisioner_stripe_subscriptions``, else a ``cus_`` customer id on the row); EDD rows
  stay NULL until the first planning pass fills in the WordPress user id (seconds after
  the worker starts), since the WordPress tables may live in another database.
- ``ended_seen_at``: NULL, so the destroy grace of a subscription that has already ended
  starts at the first pass after the upgrade (never earlier than before).
- ``planned_destroy_at``: the newest ``destroy.requested`` event by the planner, so the
  circuit breaker's rolling window counts the destroys made just before the upgrade.
- ``identity_kept_until``: NULL (earlier destroys already wiped the secrets).
- ``action_started_at``: for rows in the middle of an action, the newest
  ``<action>.requested`` event, else ``updated_at``.
- ``human_alerted_at``: for rows needing a human, the newest ``needs_attention`` message
  in the outbox.

And a new table ``provisioner_destroy_holds`` (empty; the next pass fills it).
"""
import sqlite3

import sqlalchemy as sa
from alembic import op  # noqa: I001

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

NEW_COLUMNS = (('account_id', sa.String(length=64)), ('ended_seen_at', sa.DateTime()),
               ('planned_destroy_at', sa.DateTime()), ('identity_kept_until', sa.DateTime()),
               ('action_started_at', sa.DateTime()), ('human_alerted_at', sa.DateTime()))


def upgrade() -> None:
    with op.batch_alter_table('provisioner_servers') as batch:
        for name, kind in NEW_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    op.create_index('ix_provisioner_servers_account', 'provisioner_servers', ['account_id'])
    op.create_index('ix_provisioner_servers_planned_destroy', 'provisioner_servers', ['planned_destroy_at'])
    op.create_table(
        'provisioner_destroy_holds',
        sa.Column('server_id', sa.Integer(), nullable=False),
        sa.Column('subscription_id', sa.String(length=64), nullable=False),
        sa.Column('reason_code', sa.String(length=32), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('since', sa.DateTime(), nullable=False),
        sa.Column('approved_by', sa.String(length=64), nullable=True),
        sa.Column('approved_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['server_id'], ['provisioner_servers.id']),
        sa.PrimaryKeyConstraint('server_id'),
    )
    _move_data()


def _move_data() -> None:
    servers = sa.table('provisioner_servers', sa.column('id', sa.Integer), sa.column('subscription_id', sa.String),
                       sa.column('customer_id', sa.String), sa.column('account_id', sa.String),
                       sa.column('action', sa.String), sa.column('needs_human', sa.Boolean),
                       sa.column('updated_at', sa.DateTime), sa.column('planned_destroy_at', sa.DateTime),
                       sa.column('action_started_at', sa.DateTime), sa.column('human_alerted_at', sa.DateTime))
    events = sa.table('provisioner_server_events', sa.column('server_id', sa.Integer), sa.column('at', sa.DateTime),
                      sa.column('what', sa.String), sa.column('actor', sa.String))
    stripe = sa.table('provisioner_stripe_subscriptions', sa.column('id', sa.String),
                      sa.column('customer_id', sa.String))
    outbox = sa.table('provisioner_outbox', sa.column('server_id', sa.Integer), sa.column('kind', sa.String),
                      sa.column('created_at', sa.DateTime))

    stripe_customer = (sa.select(stripe.c.customer_id)
                       .where(stripe.c.id == servers.c.subscription_id, stripe.c.customer_id != '')
                       .scalar_subquery())
    op.execute(servers.update().where(servers.c.subscription_id.like('sub\\_%', escape='\\'))
               .values(account_id=stripe_customer))
    op.execute(servers.update()
               .where(servers.c.account_id.is_(None), servers.c.customer_id.like('cus\\_%', escape='\\'))
               .values(account_id=servers.c.customer_id))

    planned = (sa.select(sa.func.max(events.c.at))
               .where(events.c.server_id == servers.c.id, events.c.what == 'destroy.requested',
                      events.c.actor == 'planner')
               .scalar_subquery())
    op.execute(servers.update().values(planned_destroy_at=planned))

    requested = (sa.select(sa.func.max(events.c.at))
                 .where(events.c.server_id == servers.c.id,
                        events.c.what == servers.c.action + '.requested')
                 .scalar_subquery())
    op.execute(servers.update().where(servers.c.action.is_not(None))
               .values(action_started_at=sa.func.coalesce(requested, servers.c.updated_at)))

    alerted = (sa.select(sa.func.max(outbox.c.created_at))
               .where(outbox.c.server_id == servers.c.id, outbox.c.kind == 'needs_attention')
               .scalar_subquery())
    op.execute(servers.update().where(servers.c.needs_human.is_(True)).values(human_alerted_at=alerted))


def downgrade() -> None:
    op.drop_table('provisioner_destroy_holds')
    op.drop_index('ix_provisioner_servers_planned_destroy', table_name='provisioner_servers')
    op.drop_index('ix_provisioner_servers_account', table_name='provisioner_servers')
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite' and sqlite3.sqlite_version_info >= (3, 35):
        # Natively: a batch copy of the table would be refused by the audit trail's foreign keys.
        for name, _ in reversed(NEW_COLUMNS):
            op.drop_column('provisioner_servers', name)
        return
    with op.batch_alter_table('provisioner_servers') as batch:
        for name, _ in reversed(NEW_COLUMNS):
            batch.drop_column(name)
