"""Many customers at once: N simulated customers over HTTP on loopback (POST /api/chat/stream,
server-sent events), each holding a multi-turn conversation, against `bot serve` with the
batching engine and, in the same run, with the serial engine (the baseline).

    .venv/bin/python benchmarks/serve_load.py [--customers 16] [--turns 3] [--full-length]
                                             [--engines batching,serial] [--project .]
                                             (engines: batching, serial, batching-no-speculation)
                                             [--via-model-server] [--brands N] [--actions actions]

Defaults: 16 customers x 3 turns on CPU, 64 x 3 on CUDA, the project's active model (the base
model when none is trained), greedy decoding. Customers arrive spread over `--ramp` seconds
and read each reply for `--think` seconds before typing the next message. `--full-length`
ignores the end-of-turn token so that every reply is `--tokens` long (128), as vLLM is measured
with `ignore_eos`.

Each server runs in its own process, with its conversations in a temporary SQLite file.
Reported: time to first token p50/p90 (overall and per turn), time to the first thing the
customer sees (a token, or an action's status when the reply starts with a call) p50/p90,
per-stream tokens/s p10/p50 (after
the first token), aggregate tokens/s (the server's own count of generated tokens over the
wall-clock time of the run), and goodput: the share of replies whose first token came within 1 s
and which then streamed at 10 tokens/s or more; how many replies called an action; the engine's
decode passes, tokens a pass (all rows together), the tokens the call grammar forced and the
speculation's guesses kept (the server's metrics). Then the ratios batching / serial.
`--actions actions` runs the example action server at the project's action endpoint for each
run, so action turns are real (without it, every call fails and the customer gets an apology).

`--via-model-server` runs the same load through a front-end (`bot serve --model-server`, no
weights) and a model server (`bot serve` with the batching engine, its `/v1/completions`), then
against the model server's engine in process (plain `bot serve`, batching): the ratio is the
extra cost of the hop (target: at most 10% of aggregate tokens/s).

`--brands N` spreads the same customers over N brands on one server (customer i talks to brand
i mod N), each brand a copy of the project with its own copy of the active model's adapter, so
every row of a batch may carry another adapter; then the same customers on the project alone
(batching, its adapter merged in: the baseline). Also reported: each server's resident memory
after the run. Targets: aggregate tokens/s at least 0.85x, memory at most 1.25x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.errors import BotError  # noqa: E402
from bot.serve.client import chat_events  # noqa: E402

# What customers type, turn by turn (starter persona topics); customer i starts at line i.
MESSAGES = [
    [
        "Hi, my broadband has been dropping every evening this week.",
        "It's the router in the living room, lights are all green.",
        "Can someone look at it this week?",
    ],
    ["How much does roaming cost in Spain?", "And in the USA?", "Thanks, is there a pass for a whole week?"],
    [
        "I was charged twice for my bill this month.",
        "It was the 3rd of November, both for 22 pounds.",
        "OK, how long does a refund take?",
    ],
    [
        "What plans do you have with more data?",
        "What's the difference between them?",
        "Can I switch in the middle of my contract?",
    ],
    ["My phone has no signal since this morning.", "I'm in Leeds, LS6 2AB.", "When will it be fixed?"],
    [
        "I want to cancel my contract.",
        "The price went up again and I'm not happy.",
        "What would you offer me to stay?",
    ],
    [
        "Where is my order? I ordered a new SIM last week.",
        "The order number is KM-120448.",
        "Can you send it to a different address?",
    ],
    ["Can I get an eSIM instead of a physical SIM?", "It's an iPhone 15.", "How long does activation take?"],
]
GOOD_FIRST_TOKEN_S, GOOD_STREAM_RATE = 1.0, 10.0
VIA = "via-model-server"  # the run through a front-end and a model server
BRANDS = "brands"  # the run with the customers spread over several brands
NO_SPECULATION = "batching-no-speculation"  # the batching engine with serve.speculation off


@dataclass
class Reply:
    customer: int
    turn: int
    first_token_s: float
    seconds: float
    text: str
    first_visible_s: float = 0.0  # the first token, or an action's status if it came first
    called: bool = False  # the reply called an action (its stream had a status)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(
    project: str,
    engine: str,
    port: int,
    tokens: int,
    full_length: bool,
    max_batch: int | None,
    folder: str,
    model_server: str | None = None,
) -> None:
    """The server process: `bot serve` with the given engine, nothing else changed but the store;
    with `model_server`, a front-end generating there."""
    import logging

    from aiohttp import web

    from bot.config import load_settings
    from bot.engine.response_model import load_response_model
    from bot.serve.app import create_app
    from bot.serve.brands import create_brands_app

    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(project)
    if engine == BRANDS:  # the copies are made with the limits below already in their config.yml
        web.run_app(create_brands_app(settings, settings.brand_folders()), host="127.0.0.1", port=port, print=None)
        return
    store = settings.endpoints.tracker_store.model_copy(
        update={"type": "sqlite", "path": str(Path(folder) / f"{engine}.sqlite3")}
    )
    settings.endpoints = settings.endpoints.model_copy(update={"tracker_store": store})
    if model_server:
        remote = settings.endpoints.model_server.model_copy(update={"url": model_server, "timeout_s": 600})
        settings.endpoints = settings.endpoints.model_copy(update={"model_server": remote})
    limits = {"max_new_tokens": tokens, "rate_per_conversation": 10_000, "rate_per_client": 100_000, "engine": engine}
    if engine == NO_SPECULATION:
        limits.update(engine="batching", speculation="off")
    if max_batch:
        limits["max_batch"] = max_batch
    settings.build = settings.build.model_copy(update={"serve": settings.build.serve.model_copy(update=limits)})
    app = create_app(settings, load_model=lambda: load_response_model(settings, ignore_eos=full_length))
    web.run_app(app, host="127.0.0.1", port=port, handler_cancellation=True, print=None, access_log=None)


async def counted(session, url: str, name: str) -> float:
    """A count the server exports: with several brands, the sum of theirs (generated tokens), or,
    for the engine they share (bot_engine_*, the same number under each brand's label), one."""
    async with session.get(f"{url}/metrics") as response:
        lines = (await response.text()).splitlines()
    values = [float(line.split()[-1]) for line in lines if line.startswith(name)]
    return max(values, default=0.0) if name.startswith("bot_engine_") else sum(values)


# What the server counts, read before and after a run: generated tokens, the batching engine's
# decode passes, guesses, guesses kept and tokens forced by the call grammar, the prompt tokens
# and those taken from the prompt cache, and the time spent compiling call grammars.
SERVER_COUNTS = (
    "bot_generated_tokens_total",
    "bot_engine_decode_steps",
    "bot_engine_guessed_tokens",
    "bot_engine_kept_guesses",
    "bot_engine_forced_tokens",
    "bot_prompt_tokens_total",
    "bot_prompt_cached_tokens_total",
    "bot_grammar_compile_seconds",
)


async def customer(
    session, url: str, i: int, turns: int, start: float, think: float, run: str, brands: int = 1
) -> list[Reply]:
    await asyncio.sleep(start)
    url += f"/b/brand{i % brands}" if brands > 1 and i % brands else ""  # brand0 is the project at the root
    lines = MESSAGES[i % len(MESSAGES)]
    replies = []
    for turn in range(turns):
        sent = time.monotonic()
        first = visible = None
        text, called = "", False
        async for event, data in chat_events(session, url, f"{run}-{i}", lines[turn % len(lines)]):
            if event in ("token", "status") and visible is None:
                visible = time.monotonic() - sent
            called = called or event == "status"
            if event == "token" and first is None:
                first = time.monotonic() - sent
            elif event == "message":
                text += data.get("text") or ""
            elif event == "error":
                raise SystemExit(f"customer {i} turn {turn + 1}: {data['error']}")
        done = time.monotonic() - sent
        first = first if first is not None else done
        replies.append(Reply(i, turn + 1, first, done, text, visible if visible is not None else first, called))
        await asyncio.sleep(think)
    return replies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def is_good(reply: Reply, rate: float) -> bool:
    """Whether a reply counts towards goodput: its first token soon enough, then streamed fast enough."""
    return reply.first_token_s <= GOOD_FIRST_TOKEN_S and rate >= GOOD_STREAM_RATE


def first_token_p50_p90(replies: list[Reply], turn: int) -> tuple[float, float]:
    """The median and 90th percentile seconds to the first token of the replies at this turn."""
    firsts = [r.first_token_s for r in replies if r.turn == turn]
    return percentile(firsts, 50), percentile(firsts, 90)


async def load_run(url: str, args, tokenizer, run: str, model_server: str | None = None) -> dict:
    import aiohttp

    from bot.runtime.action_server import action_server

    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with contextlib.AsyncExitStack() as stack:
        if args.actions:  # the example action server, at the project's action endpoint, for this run
            await stack.enter_async_context(action_server(args.actions, args.action_url, Path(args.project).resolve()))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        )
        for server in filter(None, [model_server, url]):
            for _ in range(600):  # wait for the server to load its model
                try:
                    async with session.get(f"{server}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.5)
        brands = args.brands if run == BRANDS else 1
        for i in range(brands):  # one reply from each brand first, not counted: its first reply is slower
            await customer(session, url, i, 1, 0, 0, f"{run}-warmup", brands)
        before = {name: await counted(session, url, name) for name in SERVER_COUNTS}
        started = time.monotonic()
        spread = args.ramp / max(1, args.customers - 1)
        customers = [
            customer(session, url, i, args.turns, i * spread, args.think, run, brands) for i in range(args.customers)
        ]
        results = await asyncio.gather(*customers)
        wall = time.monotonic() - started
        counts = {name: await counted(session, url, name) - before[name] for name in SERVER_COUNTS}
    tokens = counts["bot_generated_tokens_total"]
    replies = [r for rs in results for r in rs]
    rates = []
    for r in replies:
        n = len(tokenizer(r.text, add_special_tokens=False)["input_ids"])
        streaming = r.seconds - r.first_token_s
        rates.append(n / streaming if streaming > 0 and n > 1 else float("inf"))
    firsts = [r.first_token_s for r in replies]
    visible = [r.first_visible_s for r in replies]
    good = sum(1 for r, rate in zip(replies, rates, strict=True) if is_good(r, rate))
    return {
        "replies": replies,
        "ttft_p50": percentile(firsts, 50),
        "ttft_p90": percentile(firsts, 90),
        "visible_p50": percentile(visible, 50),
        "visible_p90": percentile(visible, 90),
        "by_turn": {t: first_token_p50_p90(replies, t) for t in range(1, args.turns + 1)},
        "rate_p10": percentile(rates, 10),
        "rate_p50": percentile(rates, 50),
        "aggregate": tokens / wall,
        "tokens": tokens,
        "wall": wall,
        "goodput": good / len(replies),
        "guessed": counts["bot_engine_guessed_tokens"],
        "kept": counts["bot_engine_kept_guesses"],
        "forced": counts["bot_engine_forced_tokens"],
        "passes": counts["bot_engine_decode_steps"],
        "called": sum(r.called for r in replies),
        "prompt_tokens": counts["bot_prompt_tokens_total"],
        "cached_tokens": counts["bot_prompt_cached_tokens_total"],
        "compile_s": counts["bot_grammar_compile_seconds"],
    }


def brand_copies(project: str, brands: int, folder: str, tokens: int, max_batch: int | None) -> str:
    """`brands` copies of the project under `folder` (brand0 ... brandN-1), each with its own copy
    of the active model, the benchmark's serving limits in its config.yml and its own store;
    brand0's endpoints.yml names the others. Returns brand0's folder."""
    import shutil

    import yaml

    from bot import models
    from bot.config import config_mapping, load_settings

    settings = load_settings(project)
    active = models.active(settings.models_dir)
    if active is None:
        raise SystemExit("--brands needs a trained model to copy for each brand: run 'bot train'")
    config = config_mapping(project)
    serve = {"max_new_tokens": tokens, "rate_per_conversation": 10_000, "rate_per_client": 100_000}
    config["serve"] = {**config.get("serve", {}), **serve, **({"max_batch": max_batch} if max_batch else {})}
    config["model"] = {**config.get("model", {}), "cache_dir": str(settings.cache_dir)}
    config["train"] = {**config.get("train", {}), "models_dir": "models"}
    config.setdefault("data", {})["dir"] = "training_data"
    names = [f"brand{k}" for k in range(brands)]
    for name in names:
        copy = Path(folder) / name
        shutil.copytree(settings.data_dir, copy / "training_data")
        shutil.copytree(active.folder, copy / "models" / active.id)
        models.activate(copy / "models", active.id)
        (copy / "config.yml").write_text(yaml.safe_dump(config))
        endpoints = {"action_endpoint": {"url": settings.endpoints.action_endpoint.url}}
        if name == names[0]:
            endpoints["brands"] = {other: "." if other == name else f"../{other}" for other in names}
        (copy / "endpoints.yml").write_text(yaml.safe_dump(endpoints))
    return str(Path(folder) / names[0])


def resident_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".")
    parser.add_argument("--customers", type=int, default=64 if cuda else 16)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="max_new_tokens per reply")
    parser.add_argument("--full-length", action="store_true", help="ignore end-of-turn: every reply is --tokens long")
    parser.add_argument(
        "--engines", default="batching,serial", help="engines to run, in this order; the last is the baseline"
    )
    parser.add_argument("--max-batch", type=int, default=None, help="serve.max_batch (default: config.yml)")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which the customers arrive")
    parser.add_argument("--think", type=float, default=1.0, help="seconds a customer reads before the next message")
    parser.add_argument(
        "--via-model-server",
        action="store_true",
        help="a front-end + a model server against the model server's engine in process",
    )
    parser.add_argument(
        "--brands",
        type=int,
        default=1,
        help="spread the customers over this many brands on one server, against one brand alone",
    )
    parser.add_argument(
        "--actions",
        default=None,
        metavar="PACKAGE",
        help="start this rasa-sdk action package (the example: actions) at the project's action endpoint for each run",
    )
    args = parser.parse_args()
    if args.via_model_server:
        args.engines = f"{VIA},batching"
    if args.brands > 1:
        if args.full_length:
            raise SystemExit("--full-length is not available with --brands")
        args.engines = f"{BRANDS},batching"

    from transformers import AutoTokenizer

    from bot import models
    from bot.base_model import load_tokenizer
    from bot.config import load_settings

    settings = load_settings(args.project)
    args.action_url = settings.endpoints.action_endpoint.url
    active = models.active(settings.models_dir)  # the server loads it; the client counts its reply tokens
    if active:
        tokenizer = AutoTokenizer.from_pretrained(active.tokenizer_dir)
    else:
        tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    device = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores"
    model_name = "trained model " + active.id if active else "base model"
    full_length = " (full length, end-of-turn ignored)" if args.full_length else ""
    print(
        f"model: {model_name}; {device}; {args.customers} customers x {args.turns} turns, "
        f"max {args.tokens} new tokens{full_length}, ramp {args.ramp} s, think {args.think} s"
    )

    folder = tempfile.mkdtemp(prefix="serve-load-")
    brand0 = brand_copies(args.project, args.brands, folder, args.tokens, args.max_batch) if args.brands > 1 else None
    runs = {}
    for engine in args.engines.split(","):
        spawn = multiprocessing.get_context("spawn")
        port, processes, model_server = free_port(), [], None
        if engine == VIA:
            model_port = free_port()
            model_server = f"http://127.0.0.1:{model_port}"
            processes.append(
                spawn.Process(
                    target=serve,
                    args=(args.project, "batching", model_port, args.tokens, args.full_length, args.max_batch, folder),
                    daemon=True,
                )
            )
            front = (args.project, "front-end", port, args.tokens, False, args.max_batch, folder, model_server)
            processes.append(spawn.Process(target=serve, args=front, daemon=True))
        else:
            project = brand0 if engine == BRANDS else args.project
            processes.append(
                spawn.Process(
                    target=serve,
                    args=(project, engine, port, args.tokens, args.full_length, args.max_batch, folder),
                    daemon=True,
                )
            )
        for process in processes:
            process.start()
        try:
            runs[engine] = asyncio.run(load_run(f"http://127.0.0.1:{port}", args, tokenizer, engine, model_server))
            runs[engine]["rss_mb"] = sum(resident_mb(p.pid) for p in processes)
        except BotError as e:  # the server refused or went away
            raise SystemExit(f"{engine}: {e}") from None
        finally:
            for process in processes:
                process.terminate()
                process.join(30)
        r = runs[engine]
        turns = "  ".join(f"turn {t}: {p50:.2f}/{p90:.2f} s" for t, (p50, p90) in r["by_turn"].items())
        print(f"\n[{engine}] {len(r['replies'])} replies, {r['tokens']:.0f} tokens in {r['wall']:.1f} s")
        print(f"  first token p50 {r['ttft_p50']:.2f} s, p90 {r['ttft_p90']:.2f} s   ({turns}, p50/p90)")
        print(f"  first visible (token or action status) p50 {r['visible_p50']:.2f} s, p90 {r['visible_p90']:.2f} s")
        print(f"  per-stream tokens/s p10 {r['rate_p10']:.1f}, p50 {r['rate_p50']:.1f}")
        print(
            f"  aggregate {r['aggregate']:.1f} tokens/s; goodput {r['goodput']:.0%} "
            f"(first token <= {GOOD_FIRST_TOKEN_S:.0f} s and >= {GOOD_STREAM_RATE:.0f} tokens/s)"
        )
        print(f"  server resident memory {r['rss_mb']:.0f} MB")
        print(f"  replies that called an action: {r['called']} of {len(r['replies'])}")
        if r["prompt_tokens"]:
            print(
                f"  prompt tokens {r['prompt_tokens']:.0f}, of which from the prompt cache {r['cached_tokens']:.0f} "
                f"({r['cached_tokens'] / r['prompt_tokens']:.0%})"
            )
        print(f"  tool-call grammars compiled in the engine thread: {r['compile_s']:.2f} s")
        if r["passes"]:
            print(
                f"  {r['passes']:.0f} decode passes, {r['tokens'] / r['passes']:.2f} tokens a pass (all rows); "
                f"{r['forced']:.0f} tokens forced by the call grammar ({r['forced'] / max(r['tokens'], 1):.1%} "
                "of those generated)"
            )
        if r["guessed"]:
            print(f"  speculation: {r['guessed']:.0f} tokens guessed, {r['kept'] / r['guessed']:.0%} kept")

    names = list(runs)
    if len(names) >= 2:
        new, base = runs[names[0]], runs[names[-1]]

        def in_order(replies: list[Reply]) -> list[Reply]:
            return sorted(replies, key=lambda r: (r.customer, r.turn))

        pairs = zip(in_order(new["replies"]), in_order(base["replies"]), strict=True)
        same = sum(a.text == b.text for a, b in pairs)
        print(
            f"\nratio {names[0]} / {names[-1]}: aggregate tokens/s {new['aggregate'] / base['aggregate']:.2f}x, "
            f"first token p90 {new['ttft_p90'] / base['ttft_p90']:.2f}x, "
            f"per-stream p50 {new['rate_p50'] / base['rate_p50']:.2f}x, "
            f"goodput {new['goodput']:.0%} vs {base['goodput']:.0%}; identical replies {same}/{len(new['replies'])}, "
            f"resident memory {new['rss_mb'] / base['rss_mb']:.2f}x"
        )
    first = runs[names[0]]["by_turn"]
    print(f"{names[0]}: first token at turn {args.turns} / turn 1 (p50): {first[args.turns][0] / first[1][0]:.2f}x")


if __name__ == "__main__":
    main()
