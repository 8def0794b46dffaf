"""Alembic environment: always run with a connection handed in by provisioner.db.upgrade."""

from alembic import context

from provisioner.models import Base

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # our own version table, so we never collide with another app's alembic in the WP database
    version_table="provisioner_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
