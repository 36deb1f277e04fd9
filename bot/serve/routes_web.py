"""The widget (`/widget.js`) and a demo page that embeds it (`/`, with its script and style in
`/demo.js` and `/demo.css`: the page's Content-Security-Policy allows nothing inline), and the
bot's icon (`/favicon.svg`, also answered at `/favicon.ico`, where browsers look by themselves)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bot.serve.openapi import Route, register

STATIC = Path(__file__).parent / "static"


async def demo_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def widget(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "widget.js", headers={"Cache-Control": "no-cache", "Content-Type": "text/javascript; charset=utf-8"}
    )


async def demo_script(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "demo.js", headers={"Cache-Control": "no-cache", "Content-Type": "text/javascript; charset=utf-8"}
    )


async def demo_style(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "demo.css", headers={"Cache-Control": "no-cache", "Content-Type": "text/css; charset=utf-8"}
    )


async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "favicon.svg", headers={"Cache-Control": "max-age=86400", "Content-Type": "image/svg+xml"}
    )


async def favicon_ico(request: web.Request) -> web.FileResponse:
    return await favicon(request)  # a route of its own: the OpenAPI document names operations by handler


ROUTES = [
    Route("GET", "/", demo_page, "A demo page with the chat widget", "web", media="text/html"),
    Route("GET", "/widget.js", widget, "The chat widget, to embed in any page", "web", media="text/javascript"),
    Route(
        "GET",
        "/demo.js",
        demo_script,
        "The demo page's script (it sets the widget up)",
        "web",
        media="text/javascript",
    ),
    Route("GET", "/demo.css", demo_style, "The demo page's styles", "web", media="text/css"),
    Route("GET", "/favicon.svg", favicon, "The bot's icon (the demo page links it)", "web", media="image/svg+xml"),
    Route(
        "GET",
        "/favicon.ico",
        favicon_ico,
        "The bot's icon where browsers look for it by themselves (an SVG)",
        "web",
        media="image/svg+xml",
    ),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
