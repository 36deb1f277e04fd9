"""Rate limits: requests per client address and per conversation in a sliding window."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from aiohttp import web


class RateLimiter:
    """At most `limit` hits per key in any 60-second window. Keys with no recent hit are swept
    out now and then, so memory stays bounded by the keys active in the last window."""

    SWEEP_EVERY = 1000

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit, self.window = limit, window_s
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._calls = 0

    def _sweep(self, now: float) -> None:
        oldest_kept = now - self.window
        recent = {k: hits for k, hits in self._hits.items() if hits and hits[-1] > oldest_kept}
        self._hits = defaultdict(deque, recent)

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
                text=f"too many requests from this {what}: at most {self.limit} a minute",
                headers={"Retry-After": str(int(self.window))},
            )
