"""record the VPN protocols each server's instance was installed with

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 19:20:00

A product now chooses its protocols (``products.<id>.protocols``: OpenVPN, WireGuard or both).
``vpn_protocols`` says what the running instance has, so a product that gains WireGuard gets
it on its running servers through a sync, without waiting for a rebuild. Every server before
this revision was installed with OpenVPN alone: NULL says exactly that (no backfill needed).
The WireGuard keys themselves live in the sealed ``secrets_enc``, beside the OpenVPN PKI (no
column of their own), so the downgrade leaves them there: code from before this revision reads
past them, but drops them the first time it re-seals a server's secrets (a device added or
revoked), and that server's WireGuard devices would need new profiles after an upgrade again.
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provisioner_servers') as batch:
        batch.add_column(sa.Column('vpn_protocols', sa.String(64), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        # Not batch mode: it copies the table and drops the original, which the audit trail's
        # foreign key forbids. SQLite drops a plain column in place since 3.35.
        op.execute('ALTER TABLE provisioner_servers DROP COLUMN vpn_protocols')
    else:
        op.drop_column('provisioner_servers', 'vpn_protocols')
