"""Operator routes: health, Prometheus metrics, and (with the admin token) model reload."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from aiohttp import web
from pydantic import BaseModel

from bot.engine.remote import RemoteEngine
from bot.runtime.prometheus import brands_exposition
from bot.serve.admin_auth import server_wide
from bot.serve.keys import ALSO_ADMIN, BRAND_APPS, BRAND_NAME, HOLDER, LOADER, METRICS, RELOAD_LOCK, SETTINGS, STORE
from bot.serve.openapi import RouteTable

log = logging.getLogger("bot.serve")
routes = RouteTable("operator")


class ModelInfo(BaseModel):
    id: str | None
    trained: bool
    description: str
    engine: str
    loaded_at: float
    model_server: str | None = None  # the remote engine's model server
    served_as: str | None = None  # the model name it is asked for


class Health(BaseModel):
    """200 in both states: a degraded front-end still stores messages and answers with an apology,
    and restarting it would not help (it recovers by itself when the model server is back)."""

    status: Literal["ok", "degraded"]
    model: ModelInfo
    store: str
    reason: str | None = None  # why it is degraded: the model server's last failure


class Brand(BaseModel):
    name: str
    prefix: str  # where its routes are: "" for the project this server was started in
    model: ModelInfo


class Brands(BaseModel):
    brands: list[Brand]


class Reloaded(BaseModel):
    model: ModelInfo
    previous: ModelInfo
    seconds: float


def _remote_server(model) -> dict:
    """Where a remote engine's model server is and the name it serves the model as; {} for a local engine."""
    if not isinstance(model.engine, RemoteEngine):
        return {}
    return {"model_server": model.engine.url, "served_as": model.engine.model}


def model_info(model) -> dict:
    return {
        "id": model.model_id,
        "trained": model.model_id is not None,
        "description": model.description,
        "engine": model.engine.name,
        "loaded_at": model.loaded_at,
        **_remote_server(model),
    }


@routes.get("/health", ok=Health)
async def health(request: web.Request) -> web.Response:
    """Whether the server answers, with the model in service and the store

    `degraded`, with the reason, while a remote model server fails; asked again each time, so
    health is `ok` again as soon as the model server answers."""
    model = request.app[HOLDER].current
    body = {"status": "ok", "model": model_info(model), "store": request.app[STORE].kind}
    engine = model.engine
    if isinstance(engine, RemoteEngine) and engine.fault and not await engine.probe():
        body.update(status="degraded", reason=f"model server: {engine.fault}")
    return web.json_response(body)


@routes.get("/api/brands", ok=Brands, admin=True)
async def brands(request: web.Request) -> web.Response:
    """The brands this server answers for, with where their routes are and the model of each

    With a brand's own token, that brand alone; with the server-wide token (BOT_ADMIN_TOKEN on
    a server with several brands), every brand, which the console offers to switch between."""
    here = request.app
    apps = here.get(BRAND_APPS) or {here.get(BRAND_NAME) or here[SETTINGS].root.name: here}
    root = request.match_info.apps[0]  # the server's own application: its routes have no prefix
    if not server_wide(request, here.get(ALSO_ADMIN, ())):
        apps = {name: app for name, app in apps.items() if app is here}
    found = [
        {
            "name": name,
            "prefix": "" if app is root else f"/b/{name}",
            "model": model_info(app[HOLDER].current),
        }
        for name, app in apps.items()
    ]
    return web.json_response({"brands": found})


@routes.get("/metrics", media="text/plain")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (on a server with several brands, every brand's, with a `brand` label)"""
    brands = request.app.get(BRAND_APPS)
    if brands:
        body, content_type = brands_exposition({name: app[METRICS] for name, app in brands.items()})
    else:
        body, content_type = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


@routes.post("/api/model/reload", ok=Reloaded, admin=True, errors=(400, 502, 503))
async def reload_model(request: web.Request) -> web.Response:
    """Serve the now-active model, without dropping a request

    Loads the now-active model and starts its engine beside the one in service, then swaps:
    answers already running finish on the old engine, new ones go to the new one, none fails.
    Answers once the old engine is closed."""
    async with request.app[RELOAD_LOCK]:
        body = await swap_in_active_model(request.app)
    return web.json_response(body)


async def swap_in_active_model(app: web.Application) -> dict:
    """Loads the now-active model beside the one in service and swaps them (the caller holds
    RELOAD_LOCK); returns {"model", "previous", "seconds"} as the reload route answers."""
    holder = app[HOLDER]
    started = time.monotonic()
    previous = await holder.swap(await asyncio.to_thread(app[LOADER]))
    seconds = round(time.monotonic() - started, 2)
    log.info("reloaded: now serving %s (was %s; %.1f s)", holder.current.description, previous.description, seconds)
    return {"model": model_info(holder.current), "previous": model_info(previous), "seconds": seconds}
