"""The admin token: checked in constant time, wrong guesses slowed per client address."""

from __future__ import annotations

import hmac
import logging
import math

from aiohttp import web

from bot.serve.throttle import ADMIN_FAILURES

log = logging.getLogger("bot.serve")


def check_admin(
    request: web.Request, token: str | None, also: tuple[str, ...] = (), other_brands: tuple[str, ...] = ()
) -> None:
    """Admin routes need `Authorization: Bearer <BOT_ADMIN_TOKEN>` (or one of `also`); with no
    token set they are closed. Another brand's token (`other_brands`) is refused with 403: it is
    right, but not here. Repeated wrong tokens from one client address make it wait (429), see
    bot/serve/throttle.py."""
    accepted = [t for t in (token, *also) if t]
    if not accepted:
        raise web.HTTPForbidden(text="admin routes are closed: set BOT_ADMIN_TOKEN on the server")
    failures, address = request.app[ADMIN_FAILURES], request.remote or "?"
    if wait := failures.wait(address):
        raise _admin_wait(wait)
    given = request.headers.get("Authorization", "").encode(errors="surrogateescape")
    if not _any_equal(given, accepted):
        if _any_equal(given, [t for t in other_brands if t]):
            raise web.HTTPForbidden(text="this admin token belongs to another brand")
        if wait := failures.failed(address):
            log.warning(
                "wrong admin token from %s (%d in a row): it waits %.0f s", address, failures.count(address), wait
            )
        raise web.HTTPUnauthorized(text="admin token missing or wrong (Authorization: Bearer ...)")
    failures.succeeded(address)


def server_wide(request: web.Request, also: tuple[str, ...]) -> bool:
    """Whether the request's admin token is a server-wide one (`also`), not the brand's own."""
    return _any_equal(request.headers.get("Authorization", "").encode(errors="surrogateescape"), list(also))


def _any_equal(given: bytes, tokens: list[str]) -> bool:
    """Whether `given` is `Bearer <one of tokens>`, each compared in constant time."""
    matches = [hmac.compare_digest(given, f"Bearer {t}".encode()) for t in tokens]  # all compared: no early exit
    return any(matches)


def _admin_wait(seconds: float) -> web.HTTPTooManyRequests:
    retry_after = str(math.ceil(seconds))
    return web.HTTPTooManyRequests(
        text=f"too many wrong admin tokens from this address: try again in {retry_after} s",
        headers={"Retry-After": retry_after},
    )
