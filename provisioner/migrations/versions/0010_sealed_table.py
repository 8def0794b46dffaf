"""move each server's sealed tokens out of the server table

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 22:10:00

``secrets_enc`` (PKI, SSH host key, WireGuard keys), ``ovpn_file_enc`` and
``root_password_enc`` together are ~12 KB a server: every scan of ``provisioner_servers`` (the
planning pass every minute, the dashboard's reads) dragged them along: on SQLite as overflow
pages behind every row, on MariaDB as a 1.9 GB table at 100,000 servers. They move, unchanged
(nothing is opened: a migration has no Fernet key), to ``provisioner_server_sealed``, one row
per server that has any of them. The downgrade copies them back and drops the table.

Re-running the upgrade after a failure part-way (MariaDB commits each DDL statement on its own)
skips what is already there: the table, and the rows already copied.
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

SEALED = ('secrets_enc', 'ovpn_file_enc', 'root_password_enc')


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table('provisioner_server_sealed'):
        op.create_table(
            'provisioner_server_sealed',
            sa.Column('server_id', sa.Integer(), sa.ForeignKey('provisioner_servers.id'), primary_key=True),
            *(sa.Column(name, sa.Text(), nullable=True) for name in SEALED),
        )
    columns = ', '.join(SEALED)
    op.execute(f"INSERT INTO provisioner_server_sealed (server_id, {columns}) "
               f"SELECT id, {columns} FROM provisioner_servers "
               f"WHERE ({' OR '.join(f'{c} IS NOT NULL' for c in SEALED)}) "
               f"AND id NOT IN (SELECT server_id FROM provisioner_server_sealed)")
    _drop_sealed_columns(bind.dialect.name)


def _drop_sealed_columns(dialect: str) -> None:
    if dialect == 'sqlite':
        # Not batch mode: it copies the table and drops the original, which the foreign keys of
        # the audit trail (and now of the sealed table) forbid. SQLite drops a column in place
        # since 3.35, rewriting every row without it.
        for name in SEALED:
            op.execute(f'ALTER TABLE provisioner_servers DROP COLUMN {name}')
    else:
        # One statement: one table rebuild, and all three go or none does.
        op.execute('ALTER TABLE provisioner_servers ' + ', '.join(f'DROP COLUMN {c}' for c in SEALED))


def downgrade() -> None:
    with op.batch_alter_table('provisioner_servers', recreate='never') as batch:
        for name in SEALED:
            batch.add_column(sa.Column(name, sa.Text(), nullable=True))
    sets = ', '.join(f'{c} = (SELECT x.{c} FROM provisioner_server_sealed x '
                     f'WHERE x.server_id = provisioner_servers.id)' for c in SEALED)
    op.execute(f'UPDATE provisioner_servers SET {sets} '
               f'WHERE id IN (SELECT server_id FROM provisioner_server_sealed)')
    op.drop_table('provisioner_server_sealed')
