"""The widget (`/widget.js`) and a demo page that embeds it (`/`)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"


async def demo_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def widget(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "widget.js", headers={"Cache-Control": "no-cache", "Content-Type": "text/javascript; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", demo_page)
    app.router.add_get("/widget.js", widget)
