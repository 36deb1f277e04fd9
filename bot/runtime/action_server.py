"""`bot serve --actions PACKAGE`: a rasa-sdk action server started beside the bot (before it
accepts requests) and stopped with it, however the bot stops."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlparse

import aiohttp

from bot.errors import BotError

START_TIMEOUT_S = 60


class ActionServerError(BotError):
    """The action server could not be started."""


@asynccontextmanager
async def action_server(package: str, url: str, cwd: Path):
    endpoint = urlparse(url)
    if endpoint.hostname not in ("localhost", "127.0.0.1"):
        raise ActionServerError(
            f"--actions starts a local action server, but action_endpoint.url in endpoints.yml is {url}"
        )
    port = endpoint.port or 5055
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rasa_sdk",
        "--actions",
        package,
        "--port",
        str(port),
        cwd=cwd,
        env=dict(os.environ, SANIC_HOST="127.0.0.1"),
    )
    try:
        await _wait_until_healthy(process, f"http://127.0.0.1:{port}/health", package)
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_until_healthy(process, health_url: str, package: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None:
                raise ActionServerError(
                    f"the action server for package '{package}' exited with code {process.returncode} "
                    "(its output is above): "
                    f"is the package importable from here, and is the port free?"
                )
            try:
                async with session.get(health_url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ActionServerError(f"the action server did not answer {health_url} within {START_TIMEOUT_S} s")
            await asyncio.sleep(0.2)
