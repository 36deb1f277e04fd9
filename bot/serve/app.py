"""The chat server: `create_app(settings)` builds the aiohttp application. The model, the
conversation store and the generation threads are opened in `cleanup_ctx` and closed with it
(bot/runtime/services.py's `open_services`, which `bot chat` shares);
app state lives under typed `web.AppKey`s.

Routes (see docs/serving.md): Rasa's REST channel, a streaming chat endpoint (server-sent events), an
OpenAI-compatible endpoint, conversation history and a live feed, health, Prometheus metrics,
admin routes (model reload), and the widget with its demo page.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable

from aiohttp import web

from bot.config import Settings
from bot.conversations.recovery import mark_interrupted_in_background
from bot.conversations.retention import Retention, retention_of
from bot.data.project import validate
from bot.engine.response_model import ResponseModel, load_response_model
from bot.pipelines.first_model import few_shot_base_model, needs_training
from bot.runtime.action_server import action_server
from bot.runtime.prometheus import Metrics
from bot.runtime.services import open_services
from bot.serve import openapi, routes, shutdown
from bot.serve.bodies import JSON_DEPTH
from bot.serve.cors import cors_headers, cors_middleware
from bot.serve.errors import BadRequestLog, errors_middleware
from bot.serve.feeds import ConnectionCap
from bot.serve.keys import (
    ADMIN_TOKEN,
    CLIENT_LIMIT,
    CLOSING,
    CONVERSATION_LIMIT,
    CONVERSATIONS,
    FEED_CAP,
    HOLDER,
    LOADER,
    METRICS,
    RELOAD_LOCK,
    RETENTION,
    SETTINGS,
    STORE,
    TRAIN_IF_NEEDED,
)
from bot.serve.rate_limits import RateLimiter
from bot.serve.security_headers import security_headers
from bot.serve.throttle import ADMIN_FAILURES, FailureThrottle
from bot.serve.timing import metrics_middleware

log = logging.getLogger("bot.serve")


def create_app(
    settings: Settings,
    *,
    load_model: Callable[[], ResponseModel] | None = None,
    admin_token: str | None = None,
    action_package: str | None = None,
    train_if_needed: bool = False,
) -> web.Application:
    """`load_model` defaults to loading the active trained model (or the base model); the
    admin token defaults to the environment variable BOT_ADMIN_TOKEN. With `action_package`,
    a rasa-sdk action server for it runs beside the bot, at action_endpoint.url's port. With
    `train_if_needed`, while no trained model matches the training data, the server answers with
    the base model prompted few-shot and trains the first model in the background
    (bot/pipelines/first_model.py)."""
    metrics = Metrics()
    serve = settings.build.serve
    app = web.Application(
        middlewares=[
            shutdown.in_flight_middleware,
            metrics_middleware(metrics),
            cors_middleware(settings.endpoints.cors.allow_origins),
            errors_middleware(),
        ],
        client_max_size=serve.max_body_bytes,
        handler_args={"logger": BadRequestLog()},  # malformed HTTP: one log line, no traceback
    )
    app[JSON_DEPTH] = serve.max_json_depth
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[LOADER] = load_model or (lambda: load_response_model(settings))
    app[TRAIN_IF_NEEDED] = train_if_needed
    app[ADMIN_TOKEN] = admin_token if admin_token is not None else os.environ.get("BOT_ADMIN_TOKEN") or None
    app[CONVERSATION_LIMIT] = RateLimiter(serve.rate_per_conversation)
    app[CLIENT_LIMIT] = RateLimiter(serve.rate_per_client)
    app[ADMIN_FAILURES] = FailureThrottle(serve.admin_failures_allowed, serve.admin_wait_max_s)
    app[FEED_CAP] = ConnectionCap(serve.max_feeds_per_client)
    app[RELOAD_LOCK] = asyncio.Lock()
    app.on_response_prepare.append(cors_headers(settings.endpoints.cors.allow_origins))
    app.on_response_prepare.append(security_headers(settings.endpoints.cors.allow_origins))
    app[CLOSING] = asyncio.Event()
    shutdown.install(app, serve.shutdown_timeout_s)  # on shutdown: CLOSING is set, requests drain
    if action_package:
        app.cleanup_ctx.append(lambda app: _actions_beside(app, action_package))
    app.cleanup_ctx.append(_services)
    routes.completions.read_server_key(app)
    routes.train.add_training_jobs(app)
    for module in (*routes.IN_ORDER, openapi):  # the document lists the routes in this order
        openapi.register(app, module.routes)
    return app


async def _actions_beside(app: web.Application, package: str):
    settings = app[SETTINGS]
    async with action_server(package, settings.endpoints.action_endpoint.url, settings.root):
        log.info("action server for '%s' started", package)
        yield
    log.info("action server stopped")


async def _services(app: web.Application):
    settings = app[SETTINGS]
    data = await asyncio.to_thread(validate, settings) if app[TRAIN_IF_NEEDED] else None
    first = data is not None and needs_training(settings, data)
    load = functools.partial(few_shot_base_model, settings, data) if first else app[LOADER]
    async with open_services(settings, load_model=load, metrics=app[METRICS]) as services:
        app[STORE] = store = services.store
        app[CONVERSATIONS] = services.conversations
        app[HOLDER] = services.holder
        app[METRICS].watch(app[HOLDER])
        tracker = settings.endpoints.tracker_store
        retention = retention_of(store, tracker.retention_days)  # None when retention_days is null
        if retention:
            app[RETENTION] = retention
        retry_s = max(tracker.lock_expiry_s, settings.build.serve.lock_timeout_s)
        tasks = [asyncio.create_task(_background_passes(store, retention, retry_s=retry_s), name="background-passes")]
        if first:
            tasks.append(asyncio.create_task(routes.train.train_first_model(app), name="first-model"))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _background_passes(store, retention: Retention | None, *, retry_s: float) -> None:
    """Beside the server, in this order: retention's first pass (a conversation past it is
    deleted, not marked interrupted, which would make it look active), the crash-recovery
    pass, then retention every hour until the server stops."""
    if retention:
        await retention.run_once()
    await mark_interrupted_in_background(store, retry_s=retry_s)
    if retention:
        await retention.repeat()


def run(
    settings: Settings,
    host: str,
    port: int,
    action_package: str | None = None,
    *,
    load_model: Callable[[], ResponseModel] | None = None,
    train_if_needed: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT; a client that goes away cancels its handler (and
    generation). On a signal the server stops within serve.shutdown_timeout_s (bot.serve.shutdown).
    With endpoints.yml's `brands`, every brand on one base model (bot/serve/brands.py); a brand
    with no trained model is served by the base model with its own prompt (no first training)."""
    if settings.endpoints.brands:
        from bot.serve.brands import create_brands_app

        app = create_brands_app(settings, settings.brand_folders(), action_package=action_package)
    else:
        app = create_app(
            settings, action_package=action_package, load_model=load_model, train_if_needed=train_if_needed
        )
    backstop = shutdown.aiohttp_timeout(settings.build.serve.shutdown_timeout_s)
    web.run_app(
        app, host=host, port=port, handler_cancellation=True, print=None, access_log=None, shutdown_timeout=backstop
    )
