"""Typed keys of the application's state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from bot.config import Settings
from bot.conversations.retention import Retention
from bot.conversations.store import ConversationStore
from bot.runtime.model_holder import ModelHolder
from bot.runtime.processor import Conversations
from bot.runtime.prometheus import Metrics
from bot.serve.feeds import ConnectionCap
from bot.serve.rate_limits import RateLimiter

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
LOADER = web.AppKey("load_model", Callable)
TRAIN_IF_NEEDED = web.AppKey("train_if_needed", bool)  # bot serve --train-if-needed (make run)
ADMIN_TOKEN = web.AppKey("admin_token", str)
# Several brands on one server (bot/serve/brands.py): tokens that also open this brand's admin
# routes (the server-wide BOT_ADMIN_TOKEN), and other brands' tokens, which get 403 here.
ALSO_ADMIN = web.AppKey("also_admin", tuple)
OTHER_BRANDS_TOKENS = web.AppKey("other_brands_tokens", tuple)
BRAND_NAME = web.AppKey("brand_name", str)  # a brand's application: its name
BRAND_APPS = web.AppKey("brand_apps", dict)  # on the root: every brand's application by name (OpenAI's `model`)
CONVERSATION_LIMIT = web.AppKey("conversation_limit", RateLimiter)
CLIENT_LIMIT = web.AppKey("client_limit", RateLimiter)
RELOAD_LOCK = web.AppKey("reload_lock", asyncio.Lock)
CLOSING = web.AppKey("closing", asyncio.Event)  # set when the server shuts down: long-lived streams end
HOLDER = web.AppKey("holder", ModelHolder)
STORE = web.AppKey("store", ConversationStore)
CONVERSATIONS = web.AppKey("conversations", Conversations)
FEED_CAP = web.AppKey("feed_cap", ConnectionCap)  # live feeds open per client address
RETENTION = web.AppKey("retention", Retention)  # there when tracker_store.retention_days is set
