"""servers and server events

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-21 23:33:44.912700
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('provisioner_servers',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('product_id', sa.String(length=64), nullable=False),
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('server_ip', sa.String(length=45), nullable=True),
    sa.Column('user_email', sa.String(length=191), nullable=False),
    sa.Column('server_name', sa.String(length=191), nullable=True),
    sa.Column('root_password_enc', sa.Text(), nullable=True),
    sa.Column('bandwidth_this_month', sa.BigInteger(), nullable=False),
    sa.Column('bandwidth_limit_this_month', sa.BigInteger(), nullable=False),
    sa.Column('rebuild_schedule', sa.String(length=16), nullable=False),
    sa.Column('current_location', sa.String(length=16), nullable=True),
    sa.Column('rebuild_schedule_location', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ovpn_file_enc', sa.Text(), nullable=True),
    sa.Column('rebuild_now_location', sa.String(length=16), nullable=True),
    sa.Column('rebuild_now_status', sa.Boolean(), nullable=False),
    sa.Column('instance_id', sa.String(length=64), nullable=True),
    sa.Column('instance_label', sa.String(length=128), nullable=True),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('old_instance_id', sa.String(length=64), nullable=True),
    sa.Column('target_location', sa.String(length=16), nullable=True),
    sa.Column('dns_record_id', sa.String(length=64), nullable=True),
    sa.Column('snapshot_id', sa.String(length=64), nullable=True),
    sa.Column('secrets_enc', sa.Text(), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=True),
    sa.Column('step', sa.String(length=32), nullable=True),
    sa.Column('step_deadline', sa.DateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('needs_human', sa.Boolean(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('bandwidth_month', sa.String(length=7), nullable=True),
    sa.Column('bandwidth_carried', sa.BigInteger(), nullable=False),
    sa.Column('last_rebuilt_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('destroyed_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('server_name'),
    sa.UniqueConstraint('subscription_id')
    )
    with op.batch_alter_table('provisioner_servers', schema=None) as batch_op:
        batch_op.create_index('ix_provisioner_servers_next_attempt', ['next_attempt_at'], unique=False)
        batch_op.create_index('ix_provisioner_servers_status', ['status'], unique=False)
        batch_op.create_index('ix_provisioner_servers_user_email', ['user_email'], unique=False)

    op.create_table('provisioner_server_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('what', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['provisioner_servers.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('provisioner_server_events', schema=None) as batch_op:
        batch_op.create_index('ix_provisioner_server_events_server_at', ['server_id', 'at'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('provisioner_server_events', schema=None) as batch_op:
        batch_op.drop_index('ix_provisioner_server_events_server_at')

    op.drop_table('provisioner_server_events')
    with op.batch_alter_table('provisioner_servers', schema=None) as batch_op:
        batch_op.drop_index('ix_provisioner_servers_user_email')
        batch_op.drop_index('ix_provisioner_servers_status')
        batch_op.drop_index('ix_provisioner_servers_next_attempt')

    op.drop_table('provisioner_servers')

