"""Load and soak: many customers at once on each conversation store, a steady rate for a long
time, and chat with a thousand idle live feeds open, against a real server process.

    .venv/bin/python benchmarks/load_soak.py load  [--customers 100] [--messages 10] [--api stream|rest]
                                                   [--stores sqlite,postgresql,redis]
    .venv/bin/python benchmarks/load_soak.py feeds [--feeds 1000] [--rounds 3] [--stores sqlite,postgresql,redis]
    .venv/bin/python benchmarks/load_soak.py soak  [--minutes 20] [--rate 5] [--warmup 120] [--store sqlite]

The server is `bot.serve.app.run` in its own process (tests/server_process.py) with the scripted
engine, which writes a fixed reply through the real detokenizer (`--token-delay` seconds a
token, 0 by default): the figures measure the server and its store, not a model. PostgreSQL
is 127.0.0.1:5432/test and Redis 127.0.0.1:6379/15 (BOT_TEST_POSTGRES_URL, BOT_TEST_REDIS_URL);
conversation ids carry a random prefix. The project allows the load (rate_per_client,
rate_per_conversation raised); every other setting is the default.

load: every customer sends its messages one after another, each once the previous reply is
complete; then every conversation is read back (GET /api/conversations/{sender}): each message
stored once, in order, each answered. Reported per store: messages/s, latency p50/p90 (message
sent to reply complete), errors, and the ratio to the first store.

feeds: chat latency (20 customers x 5 messages) without and with `--feeds` idle live feeds
open (GET /api/conversations/{sender}/events on conversations nobody writes to), rounds
interleaved; the feeds come from 127.0.0.2, 127.0.0.3, ..., `serve.max_feeds_per_client` each.

soak: `--rate` messages a second for `--minutes`, 20 customers at a time, each sending 5
messages with its live feed open, then replaced by a new one. Every `--every` seconds: the
server's resident memory (/proc/PID/status VmRSS), open file descriptors (/proc/PID/fd) and
asyncio tasks (/metrics bot_asyncio_tasks). Verdict: memory grows at most 5% from the end of
the warm-up to the end of the load (medians of 30 s), and open files and tasks are back at
their idle level (taken after a warm-up burst, before the soak) once the load stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test helpers, imported as the suite imports them
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from load_support import (  # noqa: E402
    STORES,
    idle_feeds,
    load_project,
    memory_growth,
    percentile,
    run_id,
    run_load,
    soak,
)
from machine import cpu_name  # noqa: E402
from server_process import ServerProcess  # noqa: E402

MEMORY_GROWTH_LIMIT = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server(store: str, args, folder: Path, **serve) -> ServerProcess:
    project = load_project(folder / store, args.cache_dir, store, **serve)
    return ServerProcess(project, free_port(), delay=args.token_delay)


def load_mode(args, folder: Path) -> None:
    route = "POST /api/chat/stream" if args.api == "stream" else "the REST webhook"
    print(f"{args.customers} customers x {args.messages} messages at once through {route}")
    rows = {}
    for store in args.stores:
        with server(store, args, folder) as process:
            result = asyncio.run(run_load(process.url, args.customers, args.messages, api=args.api))
        r = rows[store] = result.summary()
        print(
            f"[{store}] {r['messages']} messages in {r['wall_s']:.1f} s: {r['messages_per_s']:.1f} messages/s, "
            f"latency p50 {r['p50_s'] * 1000:.0f} ms, p90 {r['p90_s'] * 1000:.0f} ms; errors {r['errors']}, "
            f"unanswered {r['unanswered']}, stored wrong {r['problems']} conversations"
        )
        for line in (result.errors + result.unanswered + result.problems)[:5]:
            print("   ", line)
    base = next(iter(rows))
    for store, r in list(rows.items())[1:]:
        b = rows[base]
        print(
            f"ratio {store} / {base}: messages/s {r['messages_per_s'] / b['messages_per_s']:.2f}x, "
            f"p90 {r['p90_s'] / b['p90_s']:.2f}x"
        )
    bad = sum(r["errors"] + r["unanswered"] + r["problems"] for r in rows.values())
    if bad:
        print("verdict:", f"FAILED ({bad} problems)")
    else:
        print("verdict:", "every message stored once and in order, every customer answered")


async def feeds_rounds(url: str, args, per_address: int) -> tuple[list[float], list[float], int]:
    without, with_feeds, errors = [], [], 0
    for _ in range(args.rounds):
        quiet = await run_load(url, 20, 5)
        without += [s.seconds for s in quiet.sent]
        async with idle_feeds(url, args.feeds, per_address, run_id()):
            await asyncio.sleep(2)  # every feed is waiting
            busy = await run_load(url, 20, 5)
        with_feeds += [s.seconds for s in busy.sent]
        errors += len(quiet.errors + busy.errors + quiet.problems + busy.problems)
    return without, with_feeds, errors


def feeds_mode(args, folder: Path) -> None:
    per_address = args.feeds_per_client
    print(
        f"chat latency, 20 customers x 5 messages, without and with {args.feeds} idle live feeds "
        f"({per_address} per client address, from {-(-args.feeds // per_address)} addresses), "
        f"{args.rounds} rounds interleaved"
    )
    for store in args.stores:
        with server(store, args, folder, max_feeds_per_client=per_address) as process:
            without, with_feeds, errors = asyncio.run(feeds_rounds(process.url, args, per_address))
        a50, a90, b50, b90 = (
            percentile(without, 50),
            percentile(without, 90),
            percentile(with_feeds, 50),
            percentile(with_feeds, 90),
        )
        print(
            f"[{store}] without feeds p50 {a50 * 1000:.0f} ms, p90 {a90 * 1000:.0f} ms; "
            f"with {args.feeds} feeds p50 {b50 * 1000:.0f} ms, "
            f"p90 {b90 * 1000:.0f} ms; "
            f"ratio with / without: p50 {b50 / a50:.2f}x, p90 {b90 / a90:.2f}x; errors {errors}"
        )


def soak_mode(args, folder: Path) -> None:
    seconds = args.minutes * 60
    print(
        f"soak: {args.rate} messages/s for {args.minutes:g} min on {args.store}, 20 customers at a time, "
        f"5 messages each with a live feed; "
        f"warm-up {args.warmup:.0f} s, a sample every {args.every:.0f} s"
    )
    last_print = [0.0]

    def log(s, sent):
        if s.t - last_print[0] >= 60 or last_print[0] == 0:
            last_print[0] = s.t
            errors = sum(1 for m in sent if m.error)
            print(
                f"  {s.t / 60:5.1f} min: rss {s.rss_kb / 1024:.1f} MiB, "
                f"fds {s.fds}, tasks {s.tasks}, feeds {s.feeds}, "
                f"sent {len(sent)}, errors {errors}",
                flush=True,
            )

    with server(args.store, args, folder) as process:
        result = asyncio.run(
            soak(process.process.pid, process.url, seconds=seconds, rate=args.rate, every=args.every, log=log)
        )
    before, after, growth = memory_growth(result, args.warmup)
    errors = sum(1 for m in result.sent if m.error or not m.answer)
    latency = [m.seconds for m in result.sent]
    start, end = result.start, result.end
    peak_rss_kb = max(s.rss_kb for s in result.samples)
    peak_fds = max(s.fds for s in result.samples)
    peak_tasks = max(s.tasks for s in result.samples)
    print(
        f"sent {len(result.sent)} messages ({len(result.sent) / seconds:.2f}/s), errors or unanswered {errors}; "
        f"latency p50 {percentile(latency, 50) * 1000:.0f} ms, p90 {percentile(latency, 90) * 1000:.0f} ms"
    )
    print(
        f"resident memory: idle start {start.rss_kb / 1024:.1f} MiB; after warm-up {before / 1024:.1f} MiB, "
        f"end of load {after / 1024:.1f} MiB: "
        f"{growth:+.1%} (limit +{MEMORY_GROWTH_LIMIT:.0%}); peak {peak_rss_kb / 1024:.1f} MiB"
    )
    print(
        f"open files: idle start {start.fds}, peak {peak_fds}, idle end {end.fds}; "
        f"asyncio tasks: idle start {start.tasks}, peak {peak_tasks}, idle end {end.tasks}"
    )
    back_to_idle = end.fds <= start.fds and end.tasks <= start.tasks
    ok = growth <= MEMORY_GROWTH_LIMIT and back_to_idle and not errors
    print("verdict:", "PASS" if ok else "FAIL")
    if args.samples:
        with open(args.samples, "w") as f:
            f.write("seconds,rss_kb,fds,tasks,feeds\n")
            f.writelines(f"{s.t:.1f},{s.rss_kb},{s.fds},{s.tasks},{s.feeds}\n" for s in result.samples)
        print(f"samples written to {args.samples}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["load", "feeds", "soak"])
    parser.add_argument(
        "--stores",
        default=",".join(STORES),
        help="load, feeds: stores to run, in this order (the first is the baseline)",
    )
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10, help="messages per customer")
    parser.add_argument("--api", choices=["stream", "rest"], default="stream")
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument(
        "--feeds-per-client", type=int, default=100, help="serve.max_feeds_per_client of the server (the default)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="soak: messages per second")
    parser.add_argument("--warmup", type=float, default=120.0, help="soak: seconds before memory is compared")
    parser.add_argument("--every", type=float, default=5.0, help="soak: seconds between samples")
    parser.add_argument("--store", choices=STORES, default="sqlite", help="soak: the store")
    parser.add_argument("--samples", help="soak: write every sample to this CSV file")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds the scripted engine takes per token")
    parser.add_argument(
        "--cache-dir", type=Path, default=ROOT / ".cache" / "test-models", help="where the bundled tokenizer is cached"
    )
    args = parser.parse_args()
    args.stores = args.stores.split(",")
    print(
        f"{cpu_name()}, {os.cpu_count()} cores; scripted engine ({args.token_delay:g} s a token): "
        f"this measures the server and its store, not a model"
    )
    folder = Path(tempfile.mkdtemp(prefix="load-soak-"))
    started = time.monotonic()
    {"load": load_mode, "feeds": feeds_mode, "soak": soak_mode}[args.mode](args, folder)
    print(f"({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
