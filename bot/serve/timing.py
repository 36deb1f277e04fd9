"""Request metrics and the time to the first token a customer sees."""

from __future__ import annotations

import time

from aiohttp import web

ARRIVED = web.RequestKey("arrived", float)  # _now() when the request came in (set by metrics_middleware)
_FIRST_TOKEN_SEEN = web.RequestKey("first_token_seen", bool)
_FIRST_VISIBLE_SEEN = web.RequestKey("first_visible_seen", bool)


def first_token(request: web.Request, metrics) -> None:
    """Time to first token (`bot_time_to_first_token_seconds`), measured here and only here: from
    when the request arrived, so the wait a client sees is all in it (reading its body, the
    checks, borrowing the model, rendering the prompt, the engine's queue), to its reply's first
    text. Every route that generates calls it as that text comes; once per request. It is also
    the first thing the customer sees, unless a status came before it."""
    if request.get(_FIRST_TOKEN_SEEN):
        return
    now = _now()
    _observe_first(request, _FIRST_VISIBLE_SEEN, metrics.first_visible, now)
    _observe_first(request, _FIRST_TOKEN_SEEN, metrics.first_token, now)


def first_visible(request: web.Request, metrics) -> None:
    """Time to the first thing the customer sees (`bot_time_to_first_visible_seconds`): a token
    of the reply, or the status of an action being called; once per request."""
    if not request.get(_FIRST_VISIBLE_SEEN):
        _observe_first(request, _FIRST_VISIBLE_SEEN, metrics.first_visible, _now())


def _observe_first(request: web.Request, seen: web.RequestKey, histogram, now: float) -> None:
    if not request.get(seen):
        request[seen] = True
        histogram.observe(now - request[ARRIVED])


def _now() -> float:
    """The clock of time to first token (a test sets it)."""
    return time.monotonic()


def metrics_middleware(metrics):
    @web.middleware
    async def measure(request: web.Request, handler):
        request[ARRIVED] = started = _now()
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
            metrics.latency.labels(route).observe(_now() - started)

    return measure
