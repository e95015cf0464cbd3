"""Alembic environment: async engine on the direct (unpooled) database URL."""

import asyncio
import os
from logging.config import fileConfig

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from app.config import ConfigError, DatabaseUrl
from app.db import connect_args
from app.models import Base

target_metadata = Base.metadata
if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def _database_url() -> DatabaseUrl:
    raw = os.environ.get("DATABASE_URL_UNPOOLED") or os.environ.get("DATABASE_URL")
    if not raw:
        raise ConfigError("set DATABASE_URL (or DATABASE_URL_UNPOOLED) to run migrations")
    return DatabaseUrl.parse(raw)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = _database_url()
    engine = create_async_engine(
        url.sqlalchemy_url, poolclass=pool.NullPool, connect_args=connect_args(url, pooled=False)
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url().sqlalchemy_url, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
