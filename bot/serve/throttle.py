"""Slowing down guessing: wrong admin tokens from one client address make it wait.

Failures below `allowed` cost nothing (a typo); the `allowed`-th and each one after it make the
address wait before its next try, 1 s, then 2, 4, 8 ... at most `max_wait_s`. While it waits, every try
from it is refused, with the right token too, so a guesser learns nothing from the answer. A
success forgets the address's failures, and so does `max_wait_s` without a failure. At most
`max_keys` addresses are remembered, those with the oldest last failure forgotten first, so
memory stays bounded whatever the number of addresses."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

FIRST_WAIT_S = 1.0


@dataclass
class _Failures:
    count: int
    last: float  # when the latest failure happened (the clock's seconds)
    until: float  # no try before this


class FailureThrottle:
    def __init__(
        self, allowed: int, max_wait_s: float, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ):
        self.allowed, self.max_wait, self.max_keys, self.clock = allowed, max_wait_s, max_keys, clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()  # oldest last failure first

    def _forget_stale(self, now: float) -> None:
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if now - oldest.last <= self.max_wait and len(self._failures) <= self.max_keys:
                return
            self._failures.popitem(last=False)

    def wait(self, key: str) -> float:
        """Seconds before `key` may try again; 0 when it may try now."""
        now = self.clock()
        self._forget_stale(now)
        record = self._failures.get(key)
        return max(0.0, record.until - now) if record else 0.0

    def failed(self, key: str) -> float:
        """Counts a failure; returns the wait it earns (0 while the free ones last)."""
        now = self.clock()
        record = self._failures.pop(key, None) or _Failures(0, now, now)
        record.count += 1
        record.last = now
        beyond = record.count - self.allowed
        wait = min(self.max_wait, FIRST_WAIT_S * 2 ** min(beyond, 60)) if beyond >= 0 else 0.0
        record.until = now + wait
        self._failures[key] = record  # to the end: the newest failure
        self._forget_stale(now)
        return wait

    def count(self, key: str) -> int:
        """Failures remembered for `key`."""
        record = self._failures.get(key)
        return record.count if record else 0

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)


ADMIN_FAILURES = web.AppKey("admin_failures", FailureThrottle)  # wrong admin tokens per client address
