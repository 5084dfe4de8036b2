"""Alembic environment: target metadata from ca_service.storage, URL from ca-service Settings.

``ca-service db upgrade`` passes an open connection in ``config.attributes``; plain
``alembic upgrade head`` (with -c ca_service/storage/migrations/alembic.ini) reads the URL from CA_* settings.
"""

from __future__ import annotations

from alembic import context

from ca_service.config import load_settings
from ca_service.storage.db import Database
from ca_service.storage.models import Base, include_object

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=include_object,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    # Through Database, so that a file it creates has the same pragmas and private mode.
    db = Database(load_settings().resolved_database_url)
    with db.engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            include_object=include_object,
            render_as_batch=conn.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    db.dispose()


if context.is_offline_mode():
    context.configure(url=load_settings().resolved_database_url, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
