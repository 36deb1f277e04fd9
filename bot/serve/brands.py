"""Several brands on one server: endpoints.yml's `brands:` (or `bot serve --brand NAME=DIR`)
names other bot projects to serve beside this one. Each brand is a whole bot project (persona,
actions, dialogues, trained models, its own endpoints.yml) served by an application of its own,
mounted under `/b/NAME/`; this project answers there too when `brands` names it ('.'), and
always without the prefix, so today's clients keep working.

The base model loads once and every brand's model generates on one batching engine, each with
its own LoRA adapter (bot.engine.brands). Each brand keeps its own conversations (the store its
endpoints.yml names; two brands may not share one), its own admin token
(`BOT_ADMIN_TOKEN_<NAME>`: another brand's is refused with 403) and its own model reloads. The
server-wide `BOT_ADMIN_TOKEN` opens every brand's admin routes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiohttp import web

from bot import models
from bot.config import ModelServer, Settings, load_settings
from bot.engine.brands import SharedBase, open_shared_base
from bot.engine.response_model import ResponseModel, remote_response_model
from bot.errors import BotError
from bot.serve.keys import ALSO_ADMIN, BRAND_APPS, BRAND_NAME, OTHER_BRANDS_TOKENS

log = logging.getLogger("bot.serve")
PREFIX = "/b/{}/"


class BrandsMisconfigured(BotError):
    """The brands can't be served together as configured."""


def token_variable(brand: str) -> str:
    """The environment variable holding a brand's admin token."""
    return "BOT_ADMIN_TOKEN_" + brand.upper().replace("-", "_")


def store_place(settings: Settings) -> tuple:
    """Where a project's conversations are stored: two brands with the same place would mix them."""
    store = settings.endpoints.tracker_store
    if store.type == "sqlite":
        return ("sqlite", str((settings.root / store.path).resolve()))
    if store.type == "redis":
        return ("redis", store.url, store.key_prefix)
    return (store.type, store.url)


def brand_settings(settings: Settings, brands: dict[str, Path]) -> tuple[str, dict[str, Settings]]:
    """The default brand's name (the one `brands` names this project by, else its folder's
    name) and every brand's settings, the default first. BrandsMisconfigured when two brands
    would store their conversations in the same place."""
    default = next((name for name, folder in brands.items() if folder == settings.root), settings.root.name)
    every = {default: settings} | {name: load_settings(f) for name, f in brands.items() if f != settings.root}
    seen: dict[tuple, str] = {}
    for name, each in every.items():
        place = store_place(each)
        if place in seen:
            raise BrandsMisconfigured(
                f"brands {seen[place]!r} and {name!r} would store their conversations in the same place "
                f"({' '.join(str(p) for p in place if p)}): give each its own tracker_store in its endpoints.yml "
                "(a SQLite file, a PostgreSQL ?search_path=SCHEMA, or a Redis key_prefix)"
            )
        seen[place] = name
    return default, every


def create_brands_app(settings: Settings, brands: dict[str, Path], *, action_package: str | None = None):
    """The server for this project and `brands` (name -> project folder): this project's
    application at the root, every brand's under /b/NAME/, one shared base model."""
    from bot.serve.app import create_app

    default, every = brand_settings(settings, brands)
    tokens = {name: os.environ.get(token_variable(name)) or None for name in every}
    server_token = os.environ.get("BOT_ADMIN_TOKEN") or None
    shared: list[SharedBase] = []  # opened when the server starts, before any brand's services

    remote = settings.endpoints.model_server
    if remote.url:  # every brand generates on the model server, its adapter named after it

        def load(name: str) -> ResponseModel:
            return remote_brand_model(name, every[name], remote)
    else:

        def load(name: str) -> ResponseModel:
            return shared[0].response_model(name, every[name])

    def app_of(name: str, **options) -> web.Application:
        app = create_app(
            every[name],
            load_model=lambda: load(name),
            admin_token=tokens[name] or "",
            **options,
        )
        app[ALSO_ADMIN] = (server_token,) if server_token else ()
        app[BRAND_NAME] = name
        app[OTHER_BRANDS_TOKENS] = tuple(t for other, t in tokens.items() if other != name and t)
        return app

    async def shared_base(app: web.Application):
        base = await asyncio.to_thread(open_shared_base, every, settings.build.serve)
        shared.append(base)
        log.info("serving brands %s on one %s", ", ".join(every), base.base)
        yield
        await base.engine.close()

    root = app_of(default, action_package=action_package)
    if not remote.url:
        root.cleanup_ctx.insert(0, shared_base)  # before the services of any brand load its model
    root[BRAND_APPS] = {default: root}
    for name in every:
        if name != default:
            # each brand's own example actions, where its folder has the package, at its own action_endpoint
            has_package = action_package and (every[name].root / action_package).is_dir()
            root[BRAND_APPS][name] = app_of(name, action_package=action_package if has_package else None)
            root.add_subapp(PREFIX.format(name), root[BRAND_APPS][name])
        elif default in brands:
            root.add_subapp(PREFIX.format(name), _redirect_to_root(PREFIX.format(name)))
    return root


def remote_brand_model(brand: str, settings: Settings, server: ModelServer) -> ResponseModel:
    """A brand's response model on the model server `server` (this project's endpoints.yml): its
    requests name the brand, the adapter `bot models export-brands` exported under that name, or
    `base` for a brand with no trained model."""
    named = server.model_copy(update={"model": brand if models.active(settings.models_dir) else "base"})
    brand_settings = Settings(
        settings.root, settings.build, settings.endpoints.model_copy(update={"model_server": named})
    )
    return remote_response_model(brand_settings)


def _redirect_to_root(prefix: str) -> web.Application:
    """The default brand under its /b/NAME/ prefix too: every request there is sent on (308,
    method and body kept) to the same path without the prefix, where its application answers."""

    async def moved(request: web.Request) -> web.StreamResponse:
        target = request.rel_url.path.removeprefix(prefix.rstrip("/")) or "/"
        raise web.HTTPPermanentRedirect(str(request.rel_url.with_path(target).with_query(request.rel_url.query)))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    return app
