"""remember which generation's create POST may have been sent

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 17:00:00

``create_sent_generation`` is committed just before the create POST. The create step lists
instances by label (to adopt one whose reply was lost) only when it finds its own
generation there, i.e. when it is re-entered after a POST that may have happened; a first
attempt creates at once. A row at its instance step without an instance id when the upgrade
runs may be past its POST: it is marked, so it looks once.
"""
from alembic import op  # noqa: I001
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provisioner_servers') as batch:
        batch.add_column(sa.Column('create_sent_generation', sa.Integer(), nullable=True))
    servers = sa.table('provisioner_servers', sa.column('generation', sa.Integer), sa.column('step', sa.String),
                       sa.column('instance_id', sa.String), sa.column('create_sent_generation', sa.Integer))
    op.execute(servers.update().where(servers.c.step == 'instance', servers.c.instance_id.is_(None))
               .values(create_sent_generation=servers.c.generation))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        # Not batch mode: it copies the table and drops the original, which the audit trail's
        # foreign key forbids. SQLite drops a plain column in place since 3.35.
        op.execute('ALTER TABLE provisioner_servers DROP COLUMN create_sent_generation')
    else:
        op.drop_column('provisioner_servers', 'create_sent_generation')
