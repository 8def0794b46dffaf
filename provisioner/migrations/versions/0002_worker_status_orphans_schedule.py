"""worker status, orphans, schedule and bandwidth columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 23:47:07.909620
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('provisioner_orphans',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('provider_id', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=191), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('sightings', sa.Integer(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('kind', 'provider_id')
    )
    op.create_table('provisioner_worker_status',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('provisioner_servers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rebuild_requested_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('schedule_slot_done', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('rebuild_due_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('bandwidth_synced_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('bandwidth_alerted', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('suspended_by_cap', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('language', sa.String(length=8), nullable=True))




def downgrade() -> None:

    with op.batch_alter_table('provisioner_servers', schema=None) as batch_op:
        batch_op.drop_column('language')
        batch_op.drop_column('suspended_by_cap')
        batch_op.drop_column('bandwidth_alerted')
        batch_op.drop_column('bandwidth_synced_at')
        batch_op.drop_column('rebuild_due_at')
        batch_op.drop_column('schedule_slot_done')
        batch_op.drop_column('rebuild_requested_at')

    op.drop_table('provisioner_worker_status')
    op.drop_table('provisioner_orphans')

