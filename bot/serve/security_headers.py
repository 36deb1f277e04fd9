"""Headers that tell the browser what the server's responses may do.

Every response gets `X-Content-Type-Options: nosniff` (a JSON or text body is never run as a
script or a page), `Referrer-Policy: no-referrer`, and a Content-Security-Policy:

- an HTML page (the demo page) may load scripts, styles, images and connections from the bot's
  own origin only: no inline script or style, no plugins, no `<base>`, no form posted away; and
  only the bot itself and the origins in `cors.allow_origins` may show it in a frame;
- the operator console (`/console`) the same, but no one may show it in a frame (an admin page);
- anything else (JSON, server-sent events, the widget script) may load nothing and be framed by
  no one.

They are set in `on_response_prepare`, which runs just before the headers are sent, so streamed
responses (which send their headers before the handler returns) get them too.
"""

from __future__ import annotations

from aiohttp import web

PAGE_SOURCES = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
)
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'"


CONSOLE_POLICY = "; ".join((*PAGE_SOURCES, "frame-ancestors 'none'"))  # the operator console: never in a frame


def page_policy(frame_origins: list[str]) -> str:
    """The CSP of the server's HTML pages; `frame_origins` may frame them besides the bot itself."""
    return "; ".join((*PAGE_SOURCES, "frame-ancestors " + " ".join(["'self'", *frame_origins])))


def security_headers(frame_origins: list[str]):
    """An `on_response_prepare` handler adding the headers to every response."""
    html_policy = page_policy(frame_origins)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if response.status == 304:
            # "Not modified": the browser keeps the copy it has and takes these headers into it;
            # a 304 says nothing of its type, so adding a policy here would replace the page's own.
            return
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        if response.content_type != "text/html":
            headers["Content-Security-Policy"] = OTHER_POLICY
        else:
            headers["Content-Security-Policy"] = CONSOLE_POLICY if request.path == "/console" else html_policy

    return add_headers
