"""stripe events and subscriptions, notification outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:00:00

Hand-written; the same DDL on SQLite and MariaDB/MySQL (string keys stay at 191
characters so a utf8mb4 index fits the 767-byte limit of older InnoDB row formats).
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'provisioner_stripe_events',
        sa.Column('id', sa.String(length=191), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('created', sa.DateTime(), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.Column('processed_at', sa.DateTime(), nullable=True),
        sa.Column('outcome', sa.String(length=191), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'provisioner_stripe_subscriptions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('customer_id', sa.String(length=64), nullable=False),
        sa.Column('email', sa.String(length=191), nullable=False),
        sa.Column('price_id', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=32), nullable=False),
        sa.Column('cancel_at_period_end', sa.Boolean(), nullable=False),
        sa.Column('current_period_end', sa.DateTime(), nullable=True),
        sa.Column('ended_at', sa.DateTime(), nullable=True),
        sa.Column('trial_end', sa.DateTime(), nullable=True),
        sa.Column('object_created', sa.DateTime(), nullable=True),
        sa.Column('last_event_created', sa.DateTime(), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'provisioner_outbox',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('recipient', sa.String(length=191), nullable=False),
        sa.Column('language', sa.String(length=8), nullable=False),
        sa.Column('subject', sa.String(length=255), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('server_id', sa.Integer(), nullable=True),
        sa.Column('dedupe_key', sa.String(length=191), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
        sa.Column('lease_until', sa.DateTime(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('sent_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dedupe_key'),
    )
    with op.batch_alter_table('provisioner_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_provisioner_outbox_status_due', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('provisioner_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_provisioner_outbox_status_due')
    op.drop_table('provisioner_outbox')
    op.drop_table('provisioner_stripe_subscriptions')
    op.drop_table('provisioner_stripe_events')
