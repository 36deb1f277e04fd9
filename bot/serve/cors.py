"""CORS: the origins of endpoints.yml may call the API from a browser."""

from __future__ import annotations

from aiohttp import web

from bot.serve.errors import json_error


def cors_middleware(allowed_origins: list[str]):
    """Answers CORS preflights; `cors_headers` marks the responses themselves."""
    allowed = set(allowed_origins)

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            if origin not in allowed:
                return json_error(
                    403, f"origin {origin} is not allowed: add it to cors.allow_origins in endpoints.yml"
                )
            response = web.Response(status=204)
            response.headers.update(
                {
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Content-Type, Authorization",
                    "Access-Control-Max-Age": "600",
                }
            )
            return response
        return await handler(request)

    return cors


def cors_headers(allowed_origins: list[str]):
    """An `on_response_prepare` handler: `Access-Control-Allow-Origin` for an allowed origin on
    every response, set as its headers go out, so streamed replies (whose headers are sent
    before their handler returns) carry it too."""
    allowed = set(allowed_origins)

    async def allow_origin(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin and origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    return allow_origin
