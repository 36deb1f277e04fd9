"""What every route shares: JSON errors (never a traceback), request bodies checked against a
model, CORS for the origins in endpoints.yml, rate limits, the admin token, request metrics.

Handlers raise aiohttp's HTTP exceptions with a plain message, or the library's typed errors;
`errors_middleware` alone turns both into `{"error": message}` with the right status."""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections import defaultdict, deque

from aiohttp import web
from pydantic import BaseModel, ValidationError

from bot.engine.protocol import EngineBusy, EngineClosed, PromptTooLong
from bot.errors import BotError, RenderError
from bot.serve.store import ConversationBusy, StoreUnavailable
from bot.serve.throttle import ADMIN_FAILURES

log = logging.getLogger("bot.serve")

# Typed errors of the library -> HTTP status; anything else is a 500 with no details.
STATUS_OF = {ConversationBusy: 503, StoreUnavailable: 503, RenderError: 413, PromptTooLong: 413, EngineBusy: 503, EngineClosed: 503}


def public_message(error: Exception, doing: str) -> str:
    """What a client may be told about an error: a typed error's message, else nothing (logged)."""
    if isinstance(error, BotError):
        return str(error)
    log.error("error while %s", doing, exc_info=error)
    return "internal error; the server log has the details"


def json_error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as `model`, or 400 naming what is wrong."""
    try:
        raw = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise web.HTTPBadRequest(text=f"request body is not valid JSON: {e}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
        raise web.HTTPBadRequest(text="invalid request: " + "; ".join(problems)) from None


class RateLimiter:
    """At most `limit` hits per key in any 60-second window. Keys with no recent hit are swept
    out now and then, so memory stays bounded by the keys active in the last window."""

    SWEEP_EVERY = 1000

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit, self.window = limit, window_s
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._calls = 0

    def _sweep(self, now: float) -> None:
        self._hits = defaultdict(deque, {k: hits for k, hits in self._hits.items() if hits and hits[-1] > now - self.window})

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        self._calls += 1
        if self._calls % self.SWEEP_EVERY == 0:
            self._sweep(now)
        hits = self._hits[key]
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True

    def check(self, key: str, what: str) -> None:
        if not self.allow(key):
            raise web.HTTPTooManyRequests(
                text=f"too many requests from this {what}: at most {self.limit} a minute", headers={"Retry-After": str(int(self.window))}
            )


def check_admin(request: web.Request, token: str | None) -> None:
    """Admin routes need `Authorization: Bearer <BOT_ADMIN_TOKEN>`; with no token set they are closed.
    Repeated wrong tokens from one client address make it wait (429), see bot/serve/throttle.py."""
    if not token:
        raise web.HTTPForbidden(text="admin routes are closed: set BOT_ADMIN_TOKEN on the server")
    failures, address = request.app[ADMIN_FAILURES], request.remote or "?"
    if wait := failures.wait(address):
        raise _admin_wait(wait)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(errors="surrogateescape"), f"Bearer {token}".encode()):
        if wait := failures.failed(address):
            log.warning("wrong admin token from %s (%d in a row): it waits %.0f s", address, failures.count(address), wait)
        raise web.HTTPUnauthorized(text="admin token missing or wrong (Authorization: Bearer ...)")
    failures.succeeded(address)


def _admin_wait(seconds: float) -> web.HTTPTooManyRequests:
    retry_after = str(math.ceil(seconds))
    return web.HTTPTooManyRequests(
        text=f"too many wrong admin tokens from this address: try again in {retry_after} s", headers={"Retry-After": retry_after}
    )


def errors_middleware():
    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            headers = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
            message = e.reason if e.text is None or e.text.startswith(f"{e.status}:") else e.text  # aiohttp's default text
            return json_error(e.status, message, headers=headers)
        except Exception as e:
            status = next((s for kind, s in STATUS_OF.items() if isinstance(e, kind)), 400 if isinstance(e, BotError) else 500)
            return json_error(status, public_message(e, f"handling {request.method} {request.path}"))

    return errors


def cors_middleware(allowed_origins: list[str]):
    """Answers CORS preflights; `cors_headers` marks the responses themselves."""
    allowed = set(allowed_origins)

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            if origin not in allowed:
                return json_error(403, f"origin {origin} is not allowed: add it to cors.allow_origins in endpoints.yml")
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


def metrics_middleware(metrics):
    @web.middleware
    async def measure(request: web.Request, handler):
        started = time.monotonic()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.monotonic() - started)

    return measure
