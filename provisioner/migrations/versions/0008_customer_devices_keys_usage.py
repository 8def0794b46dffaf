"""the customer's own server: devices and their profiles, SSH keys, key-only login, restarts,
daily usage, the plan's standing, and the paged history's index

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00

Every server that has a PKI today gets its single client certificate as device "1"
("Device 1") with an OpenVPN profile: the PKI already reads its format-1 single client as
that device and renders the very same ``.ovpn``, so no customer has to do anything. Nothing
sealed is opened here (a migration has no Fernet key): the keys stay in ``secrets_enc``.
The downgrade drops what this revision added; the PKI keeps its devices (format 2), which
the code of revision 0004 reads as well.
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

def server_columns() -> list[sa.Column]:
    return [
        sa.Column('key_only', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('access_pending_since', sa.DateTime(), nullable=True),
        sa.Column('access_revision', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('restart_pending', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('restart_requested_at', sa.DateTime(), nullable=True),
        sa.Column('new_ip', sa.String(length=45), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table('provisioner_servers', recreate='never') as batch:
        for column in server_columns():
            batch.add_column(column)
    op.create_index('ix_provisioner_servers_access_pending', 'provisioner_servers', ['access_pending_since'])
    op.create_index('ix_provisioner_servers_restart', 'provisioner_servers', ['restart_pending'])
    op.create_index('ix_provisioner_server_events_server_id', 'provisioner_server_events', ['server_id', 'id'])

    op.create_table(
        'provisioner_devices',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('server_id', sa.Integer(), sa.ForeignKey('provisioner_servers.id'), nullable=False),
        sa.Column('device_id', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.UniqueConstraint('server_id', 'device_id', name='uq_provisioner_devices_server_device'),
    )
    op.create_table(
        'provisioner_device_profiles',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('device_pk', sa.Integer(), sa.ForeignKey('provisioner_devices.id'), nullable=False),
        sa.Column('protocol', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.UniqueConstraint('device_pk', 'protocol', name='uq_provisioner_device_profiles_protocol'),
    )
    op.create_table(
        'provisioner_ssh_keys',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('server_id', sa.Integer(), sa.ForeignKey('provisioner_servers.id'), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('key_type', sa.String(length=32), nullable=False),
        sa.Column('bits', sa.Integer(), nullable=False),
        sa.Column('comment', sa.String(length=100), nullable=False),
        sa.Column('public_key', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.UniqueConstraint('server_id', 'fingerprint', name='uq_provisioner_ssh_keys_fingerprint'),
    )
    op.create_table(
        'provisioner_bandwidth_days',
        sa.Column('server_id', sa.Integer(), sa.ForeignKey('provisioner_servers.id'), primary_key=True),
        sa.Column('instance_id', sa.String(length=64), primary_key=True),
        sa.Column('day', sa.Date(), primary_key=True),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
    )
    op.create_table(
        'provisioner_subscription_standing',
        sa.Column('subscription_id', sa.String(length=64), primary_key=True),
        sa.Column('status', sa.String(length=32), nullable=False),
        sa.Column('renews', sa.Boolean(), nullable=False),
        sa.Column('paid_through', sa.DateTime(), nullable=True),
        sa.Column('entitled_until', sa.DateTime(), nullable=True),
        sa.Column('seen_at', sa.DateTime(), nullable=False),
    )

    # Today's .ovpn is device 1 of every server that has a PKI.
    op.execute(
        "INSERT INTO provisioner_devices (server_id, device_id, name, created_at) "
        "SELECT id, '1', 'Device 1', created_at FROM provisioner_servers WHERE secrets_enc IS NOT NULL")
    op.execute(
        "INSERT INTO provisioner_device_profiles (device_pk, protocol, created_at) "
        "SELECT id, 'openvpn', created_at FROM provisioner_devices")


def downgrade() -> None:
    op.drop_table('provisioner_subscription_standing')
    op.drop_table('provisioner_bandwidth_days')
    op.drop_table('provisioner_ssh_keys')
    op.drop_table('provisioner_device_profiles')
    op.drop_table('provisioner_devices')
    op.drop_index('ix_provisioner_server_events_server_id', table_name='provisioner_server_events')
    op.drop_index('ix_provisioner_servers_restart', table_name='provisioner_servers')
    op.drop_index('ix_provisioner_servers_access_pending', table_name='provisioner_servers')
    # Never a table copy: on SQLite it would drop provisioner_servers, which the events reference
    # (foreign keys are on). SQLite drops an unindexed column in place since 3.35.
    with op.batch_alter_table('provisioner_servers', recreate='never') as batch:
        for column in reversed(server_columns()):
            batch.drop_column(column.name)
