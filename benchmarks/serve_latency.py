"""Serving overhead: time to first token and tokens/s of one conversation over HTTP
(POST /api/chat/stream, server-sent events, the conversation stored in SQLite) against the
same model's engine called directly, in the same run, rounds interleaved.

    .venv/bin/python benchmarks/serve_latency.py [--rounds 5] [--tokens 64] [--project .]

Uses the project's active model (or the base model when none is trained). Greedy decoding
makes both paths produce the same tokens, so the difference is what HTTP, the store, the lock
and the streaming add. Target: under 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.engine.protocol import Finished  # noqa: E402
from bot.engine.response_model import load_response_model  # noqa: E402
from bot.serve.app import create_app  # noqa: E402
from bot.serve.client import chat_events  # noqa: E402

MESSAGE = "Hi, my broadband has been dropping every evening this week. What can I do?"


async def direct(model, tokens: int) -> tuple[float, float, int, str]:
    """The engine's stream, no HTTP; 'first token' is when its first text arrives, as over HTTP."""
    messages = [{"role": "system", "content": model.profile.system_prompt}, {"role": "user", "content": MESSAGE}]
    first, result = None, None
    started = time.monotonic()
    async for item in model.stream(messages, tokens):
        if isinstance(item, Finished):
            result = item
        elif first is None:
            first = time.monotonic() - started
    return first, time.monotonic() - started, result.tokens, result.text


async def over_http(session: aiohttp.ClientSession, url: str, sender: str) -> tuple[float, float, str]:
    started = time.monotonic()
    first = None
    async for event, data in chat_events(session, url, sender, MESSAGE):
        if event == "token" and first is None:
            first = time.monotonic() - started
        elif event == "message":
            reply = data["text"]
    return first, time.monotonic() - started, reply


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens for both paths")
    args = parser.parse_args()

    settings = load_settings(args.project)
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    store = settings.endpoints.tracker_store.model_copy(update={"type": "sqlite", "path": str(tmp / "bench.sqlite3")})
    settings.endpoints = settings.endpoints.model_copy(update={"tracker_store": store})
    settings.build = settings.build.model_copy(
        update={"serve": settings.build.serve.model_copy(update={"max_new_tokens": args.tokens})}
    )
    model = load_response_model(settings)
    print(f"model: {model.description}; {args.rounds} rounds, max {args.tokens} new tokens, greedy")

    app = create_app(settings, load_model=lambda: model)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    await direct(model, 8)  # warm-up, not counted
    rows = {"direct": [], "http": []}
    async with aiohttp.ClientSession() as session:
        await over_http(session, url, "warm-up")
        for i in range(args.rounds):

            async def run_direct():
                ttft, total, tokens, text = await direct(model, args.tokens)
                rows["direct"].append((ttft, total, tokens))
                return tokens, text

            sender = f"bench-{i}"
            if i % 2:  # alternate which path goes first, so that neither gains from the order
                ttft, total, reply = await over_http(session, url, sender)
                tokens, text = await run_direct()
            else:
                tokens, text = await run_direct()
                ttft, total, reply = await over_http(session, url, sender)
            if reply != text:
                raise SystemExit(f"the two paths gave different replies:\n  direct: {text!r}\n  http:   {reply!r}")
            rows["http"].append((ttft, total, tokens))  # the same greedy tokens as the direct call
    await runner.cleanup()

    def summary(name):
        ttft = statistics.median(r[0] for r in rows[name])
        rate = statistics.median(r[2] / r[1] for r in rows[name])
        return ttft, rate

    d_ttft, d_rate = summary("direct")
    h_ttft, h_rate = summary("http")
    print(f"{'path':<22}{'first token (median)':>22}{'tokens/s (median)':>20}")
    print(f"{'engine directly':<22}{d_ttft * 1000:>19.0f} ms{d_rate:>20.1f}")
    print(f"{'HTTP /api/chat/stream':<22}{h_ttft * 1000:>19.0f} ms{h_rate:>20.1f}")
    print(
        f"ratio HTTP/direct: first token {h_ttft / d_ttft:.3f}x ({(h_ttft / d_ttft - 1) * 100:+.1f}%), "
        f"tokens/s {h_rate / d_rate:.3f}x ({(h_rate / d_rate - 1) * 100:+.1f}%)"
    )


if __name__ == "__main__":
    asyncio.run(main())
