"""A PostgreSQL schema and a Redis key prefix of a test's own, so tests that read a whole store
(migrations, the startup pass over unanswered conversations) see only their own data while
other tests use the same servers. Without a server the test skips, except in CI (CI=true)."""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager

import pytest

POSTGRES_URL = os.environ.get("BOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unavailable(kind: str, error: Exception):
    if os.environ.get("CI") == "true":
        raise error  # CI must test every store
    pytest.skip(f"{kind} server not available here: {error}")


@asynccontextmanager
async def postgres_schema():
    """Yields (url, schema): the url's connections use only the new, empty schema."""
    import asyncpg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        _unavailable("postgresql", e)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{sep}search_path={schema}", schema
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@asynccontextmanager
async def redis_prefix():
    """Yields (client, prefix); every key under the prefix is deleted afterwards."""
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    client = redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=5)
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        await client.aclose()
        _unavailable("redis", e)
    try:
        yield client, prefix
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
