"""The conversation stores by type: `OPENERS` maps each `tracker_store.type` of endpoints.yml to
the function that opens it, and `open_store` opens the one configured. The base module
(bot/conversations/store.py) knows no backend; each backend imports it, and this registry imports them all.
(The database clients themselves, asyncpg and redis, are imported only when a store connects.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.conversations.redis_locks import RedisLocks
from bot.conversations.store import ConversationStore, SQLiteStore, StoreUnavailable
from bot.conversations.store_postgres import PostgresStore
from bot.conversations.store_redis import RedisStore


def _url(config) -> str:
    if not config.url:
        raise StoreUnavailable(f"endpoints.yml: tracker_store.url is needed for type '{config.type}'")
    return config.url


async def _sqlite(settings) -> ConversationStore:
    config = settings.endpoints.tracker_store
    return SQLiteStore(settings.root / config.path, synchronous=config.sqlite_synchronous)


async def _postgresql(settings) -> ConversationStore:
    return await PostgresStore.connect(_url(settings.endpoints.tracker_store))


async def _redis(settings) -> ConversationStore:
    config = settings.endpoints.tracker_store
    return await RedisStore.connect(_url(config), lock_expiry_s=config.lock_expiry_s, prefix=config.key_prefix)


# tracker_store.type -> its opener; bot/config.py's TrackerStore.type lists the same names (a test checks).
OPENERS: dict[str, Callable[..., Awaitable[ConversationStore]]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "redis": _redis,
}


async def open_store(settings) -> ConversationStore:
    """The store `endpoints.yml` names (tracker_store), connected, with its locks from the Redis
    server of tracker_store.lock_url when that is set."""
    config = settings.endpoints.tracker_store
    opener = OPENERS.get(config.type)
    if opener is None:  # the config's validation refuses it first; this guards a settings object built otherwise
        raise StoreUnavailable(f"endpoints.yml: tracker_store.type '{config.type}' is not one of {', '.join(OPENERS)}")
    store = await opener(settings)
    if config.lock_url:
        try:
            locks = await RedisLocks.connect(config.lock_url, expiry_s=config.lock_expiry_s, prefix=config.key_prefix)
            store.take_locks_from(locks)
        except BaseException:
            await store.close()
            raise
    return store
