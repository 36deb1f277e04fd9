"""Stopping within `serve.shutdown_timeout_s` (SIGTERM, Ctrl-C), also mid-reply.

aiohttp's own shutdown timeout is not a bound on the whole: it waits that long for handlers,
then as long again after cancelling only their request bodies, and then cancels them without
waiting. So the server drains its requests itself, in `on_shutdown` (after aiohttp has stopped
listening): live feeds end at once (CLOSING), replies in progress may finish for
`drain_seconds`, what is left is cancelled and awaited briefly, and the rest of the timeout is
kept for closing the engine and the store and for the process to exit (`exit_now`). A
cancelled reply is not stored; its customer's message was stored before the model started."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import NoReturn

from aiohttp import web

from bot.serve.keys import CLOSING

CLOSE_RESERVE_S = 2.0  # of the timeout, kept for cancelling, closing the engine and the store, and exiting


class InFlight:
    """The tasks running a request handler now."""

    def __init__(self):
        self.tasks: set[asyncio.Task] = set()
        self.none = asyncio.Event()
        self.none.set()

    def enter(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        self.none.clear()

    def leave(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.none.set()

    async def wait(self, seconds: float) -> bool:
        """Whether every handler ended within `seconds`."""
        try:
            await asyncio.wait_for(self.none.wait(), max(seconds, 0))
        except TimeoutError:
            return False
        return True


IN_FLIGHT = web.AppKey("in_flight", InFlight)


def reserve_seconds(shutdown_timeout_s: float) -> float:
    return min(CLOSE_RESERVE_S, shutdown_timeout_s / 2)


def drain_seconds(shutdown_timeout_s: float) -> float:
    """How long requests in progress may go on after the signal before they are cancelled."""
    return shutdown_timeout_s - reserve_seconds(shutdown_timeout_s)


def aiohttp_timeout(shutdown_timeout_s: float) -> float:
    """run_app's own timeout, a backstop once the drain is done (aiohttp may wait it twice)."""
    return reserve_seconds(shutdown_timeout_s) / 8


@web.middleware
async def in_flight_middleware(request: web.Request, handler):
    """Counts the handlers running, for the drain."""
    running = request.app[IN_FLIGHT]
    task = asyncio.current_task()
    running.enter(task)
    try:
        return await handler(request)
    finally:
        running.leave(task)


def install(app: web.Application, shutdown_timeout_s: float) -> None:
    """Drain `app`'s requests on shutdown; `app` must have `in_flight_middleware` outermost."""
    app[IN_FLIGHT] = InFlight()

    async def drain(app: web.Application) -> None:
        app[CLOSING].set()  # live feeds and other long-lived streams end now
        running = app[IN_FLIGHT]
        if not await running.wait(drain_seconds(shutdown_timeout_s)):
            for task in list(running.tasks):
                task.cancel()
            await running.wait(reserve_seconds(shutdown_timeout_s) / 4)

    app.on_shutdown.append(drain)


def exit_now(code: int = 0) -> NoReturn:
    """End the process once the server has stopped and closed what it holds (the store has
    committed, the engine's thread has ended, the action server is stopped). The interpreter's
    own teardown after torch took 0.6 to 2.4 s on this busy 2-core CPU, enough to overrun
    the shutdown timeout, and has nothing left to save: logs and output are flushed, then the
    process exits without it."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
