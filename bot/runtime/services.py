"""What answering conversations needs, opened and closed in one place: the model (its engine
and generation threads), the conversation store, the HTTP session for the action server and
the handoff webhook, and the conversation service around them. The server opens them in its
`cleanup_ctx` (bot/serve/app.py), `bot chat` in process around its loop (bot/cli/chat.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from bot.config import Settings
from bot.conversations.backends import open_store
from bot.conversations.store import ConversationStore
from bot.engine.response_model import ResponseModel, load_response_model
from bot.policy.reply import ReplyPolicy
from bot.runtime.action_runner import ActionRunner
from bot.runtime.handoff_webhook import HandoffNotifier
from bot.runtime.model_holder import ModelHolder
from bot.runtime.processor import Conversations
from bot.runtime.prometheus import Metrics

log = logging.getLogger("bot.serve")


@dataclass(frozen=True)
class Services:
    store: ConversationStore
    conversations: Conversations

    @property
    def holder(self) -> ModelHolder:
        return self.conversations.holder


def assemble(
    settings: Settings, model: ResponseModel, store, session: aiohttp.ClientSession, *, metrics: Metrics | None = None
) -> Conversations:
    """The conversation service around a model and a store, with the action server and the
    handoff webhook of endpoints.yml."""
    endpoints = settings.endpoints
    action = endpoints.action_endpoint
    actions = ActionRunner(session, action.url, timeout_s=action.timeout_s, tracker_events=action.tracker_events)
    notify = HandoffNotifier(session, endpoints.handoff_webhook.url, endpoints.handoff_webhook.timeout_s, store)
    policy = ReplyPolicy(settings.build.serve, actions, metrics=metrics)
    return Conversations(store, ModelHolder(model), policy, settings.build.serve, on_handoff=notify)


@asynccontextmanager
async def open_services(
    settings: Settings, *, load_model: Callable[[], ResponseModel] | None = None, metrics: Metrics | None = None
) -> AsyncIterator[Services]:
    """The model (`load_model`, by default the active trained model or the base model, loaded
    in a thread), the store endpoints.yml names and the conversation service; on leaving, the
    session, the store and the model in service (after a reload, the one it was swapped for)
    are closed. A store that can't be opened closes the model already loaded."""
    model = await asyncio.to_thread(load_model or (lambda: load_response_model(settings)))
    log.info("serving %s with the %s engine", model.description, model.engine.name)
    try:
        store = await open_store(settings)
    except BaseException:
        await model.close()
        raise
    log.info("conversations are stored in %s; actions at %s", store.kind, settings.endpoints.action_endpoint.url)
    session = aiohttp.ClientSession()
    services = Services(store, assemble(settings, model, store, session, metrics=metrics))
    try:
        yield services
    finally:
        await session.close()
        await store.close()
        await services.holder.close()
