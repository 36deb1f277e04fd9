"""The operator console (`/console`): a page for people running the bot, whose panels use the
admin routes (conversations, handoff queue, drafts, models, training). Its script and styles are
files under static/console/ (the page's Content-Security-Policy allows nothing inline); the
admin token is typed in the page and kept in the tab's sessionStorage only."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from bot.serve.openapi import Param, RouteTable

FOLDER = Path(__file__).parent.parent / "static" / "console"
ASSET = r"[a-z][a-z0-9_-]{0,40}\.(?:js|css)"
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
ASSET_PARAM = Param("name", "path", {"type": "string", "pattern": f"^{ASSET}$"}, "A file of the console.")
routes = RouteTable("web", path_params=(ASSET_PARAM,))


@routes.get("/console", media="text/html")
async def console_page(request: web.Request) -> web.FileResponse:
    """The operator console (admin token asked for in the page)"""
    return web.FileResponse(FOLDER / "index.html", headers={"Cache-Control": "no-cache"})


@routes.get("/console/{name}", media="text/javascript")
async def console_asset(request: web.Request) -> web.FileResponse:
    """The console's scripts and styles

    One of the console's scripts (JavaScript modules) or its style sheet."""
    name = request.match_info["name"]
    path = FOLDER / name
    if not re.fullmatch(ASSET, name) or not path.is_file():
        raise web.HTTPNotFound(text=f"the console has no file '{name[:60]}'")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": TYPES[path.suffix]})
