"""The widget (`/widget.js`) and a demo page that embeds it (`/`, with its script and style in
`/demo.js` and `/demo.css`: the page's Content-Security-Policy allows nothing inline), and the
bot's icon (`/favicon.svg`, also answered at `/favicon.ico`, where browsers look by themselves)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bot.serve.openapi import RouteTable

STATIC = Path(__file__).parent.parent / "static"
DAY_S = 86400


def static_file(name: str, media: str, operation: str, summary: str, *, max_age_s: int = 0):
    """A handler answering with static/NAME as `media`; `operation` names it and `summary` is its
    docstring (the OpenAPI document names each operation after its handler, and takes its summary
    from the handler's docstring). Pages and scripts are checked again on each use
    (no-cache), so a new version of the widget reaches every page at once."""
    charset = "; charset=utf-8" if media.startswith("text/") else ""
    headers = {"Cache-Control": f"max-age={max_age_s}" if max_age_s else "no-cache", "Content-Type": media + charset}

    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / name, headers=headers)

    handler.__name__ = handler.__qualname__ = operation
    handler.__doc__ = summary
    return handler


# (path, file under static/, media type, operation, summary, cache lifetime in seconds)
FILES = [
    ("/", "index.html", "text/html", "demo_page", "A demo page with the chat widget", 0),
    ("/widget.js", "widget.js", "text/javascript", "widget", "The chat widget, to embed in any page", 0),
    ("/demo.js", "demo.js", "text/javascript", "demo_script", "The demo page's script (it sets the widget up)", 0),
    ("/demo.css", "demo.css", "text/css", "demo_style", "The demo page's styles", 0),
    ("/favicon.svg", "favicon.svg", "image/svg+xml", "favicon", "The bot's icon (the demo page links it)", DAY_S),
    # where browsers look for an icon by themselves: the same SVG
    ("/favicon.ico", "favicon.svg", "image/svg+xml", "favicon_ico", "The bot's icon, where browsers look", DAY_S),
]

routes = RouteTable("web")
for path, name, media, operation, summary, age in FILES:
    routes.get(path, media=media)(static_file(name, media, operation, summary, max_age_s=age))
