"""indexes for the driver, rebuild requests and the schedule marker; when a schedule was set

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 16:00:00

``schedule_set_at`` replaces reading the audit trail for the newest ``schedule.changed``
event (the marker needed it to start a new schedule at its *next* slot): existing rows take
that event's time, so nothing changes for a schedule saved before the upgrade.
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('provisioner_servers', sa.Column('schedule_set_at', sa.DateTime(), nullable=True))
    op.create_index('ix_provisioner_servers_due', 'provisioner_servers',
                    ['action', 'next_attempt_at', 'lease_until', 'needs_human', 'paused'])
    op.create_index('ix_provisioner_servers_rebuild_now', 'provisioner_servers',
                    ['rebuild_now_status', 'rebuild_due_at'])
    op.create_index('ix_provisioner_servers_schedule', 'provisioner_servers',
                    ['rebuild_schedule', 'schedule_slot_done'])
    servers = sa.table('provisioner_servers', sa.column('id', sa.Integer), sa.column('schedule_set_at', sa.DateTime))
    events = sa.table('provisioner_server_events', sa.column('server_id', sa.Integer), sa.column('at', sa.DateTime),
                      sa.column('what', sa.String))
    newest = (sa.select(sa.func.max(events.c.at))
              .where(events.c.server_id == servers.c.id, events.c.what == 'schedule.changed')
              .scalar_subquery())
    op.execute(servers.update().values(schedule_set_at=newest))


def downgrade() -> None:
    op.drop_index('ix_provisioner_servers_schedule', table_name='provisioner_servers')
    op.drop_index('ix_provisioner_servers_rebuild_now', table_name='provisioner_servers')
    op.drop_index('ix_provisioner_servers_due', table_name='provisioner_servers')
    if op.get_bind().dialect.name == 'sqlite':
        # Not batch mode: it copies the table and drops the original, which the audit trail's
        # foreign key forbids. SQLite drops a plain column in place since 3.35.
        op.execute('ALTER TABLE provisioner_servers DROP COLUMN schedule_set_at')
    else:
        op.drop_column('provisioner_servers', 'schedule_set_at')
