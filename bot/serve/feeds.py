"""A cap on the live feeds one client address holds open at once: a feed is a long-lived
connection, so without one a single address could hold thousands of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web


class ConnectionCap:
    """At most `limit` connections open at once per key (a client address)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[str, int] = {}

    @contextmanager
    def hold(self, key: str, what: str) -> Iterator[None]:
        """One connection for `key` while the block runs; 429 when `key` already holds `limit`."""
        if self._open.get(key, 0) >= self.limit:
            raise web.HTTPTooManyRequests(
                text=f"too many {what} open from this client address: at most {self.limit} at once"
            )
        self._open[key] = self._open.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._open[key] - 1
            if left:
                self._open[key] = left
            else:
                del self._open[key]  # memory stays bounded by the addresses connected now
