"""Load, soak and idle live feeds against a real server process (tests.server_process: the real
`bot.serve.app.run` with the scripted engine, so what is measured is the server and its store,
not a model). Shared by tests/test_load.py and benchmarks/load_soak.py.

Each customer sends its messages one after another, each once its previous reply is complete,
as the widget does; every message's text is unique, so reading the conversation back shows
whether each was stored exactly once and in order."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from serve_support import make_project

POSTGRES_URL = os.environ.get("BOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
STORES = ("sqlite", "postgresql", "redis")
# Limits that let one test client (one address, many conversations) send the whole load; the
# defaults in bot/config.py are unchanged.
LOAD_LIMITS = {"rate_per_client": 1_000_000, "rate_per_conversation": 10_000}


def tracker_store(store: str) -> str:
    if store == "sqlite":
        return "tracker_store:\n  type: sqlite\n  path: conversations.sqlite3\n"
    return f"tracker_store:\n  type: {store}\n  url: {POSTGRES_URL if store == 'postgresql' else REDIS_URL}\n"


def load_project(folder: Path, cache_dir: Path, store: str, **serve) -> Path:
    """A starter project whose server allows the load (LOAD_LIMITS, and `serve` on top) and keeps
    its conversations in `store`; nothing listens at its action endpoint."""
    limits = {**LOAD_LIMITS, **serve}
    config = "serve:\n" + "".join(f"  {k}: {v}\n" for k, v in limits.items())
    endpoints = "action_endpoint:\n  url: http://127.0.0.1:9/webhook\n" + tracker_store(store)
    folder.mkdir(parents=True, exist_ok=True)
    return make_project(folder, cache_dir, config=config, endpoints=endpoints)


def run_id() -> str:
    """A prefix for conversation ids no other run (or concurrent test) uses in a shared database."""
    return f"load-{uuid.uuid4().hex[:8]}"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


# -- load: many customers at once --------------------------------------------------------------


@dataclass
class Sent:
    sender: str
    text: str
    seconds: float
    answer: str | None  # the bot's reply text; None when none came
    error: str | None = None


def message_text(sender: str, k: int) -> str:
    return f"Hello from {sender}, message {k}: my broadband drops every evening."


async def send(session: aiohttp.ClientSession, url: str, sender: str, text: str, api: str) -> Sent:
    """One message through POST /api/chat/stream (api="stream") or the REST webhook (api="rest")."""
    started, answer, error = time.monotonic(), None, None
    try:
        if api == "rest":
            async with session.post(
                f"{url}/webhooks/rest/webhook", json={"sender": sender, "message": text}
            ) as response:
                if response.status != 200:
                    error = f"{response.status}: {(await response.text())[:200]}"
                else:
                    answer = " ".join(m.get("text") or "" for m in await response.json()) or None
        else:
            async with session.post(f"{url}/api/chat/stream", json={"sender": sender, "message": text}) as response:
                if response.status != 200:
                    error = f"{response.status}: {(await response.text())[:200]}"
                else:
                    event = None
                    async for raw in response.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event == "message":
                            answer = (answer + " " if answer else "") + (json.loads(line[6:]).get("text") or "")
                        elif line.startswith("data: ") and event == "error":
                            error = line[6:]
    except (TimeoutError, aiohttp.ClientError) as e:
        error = f"{type(e).__name__}: {e}"
    return Sent(sender, text, time.monotonic() - started, answer, error)


async def customer(session: aiohttp.ClientSession, url: str, sender: str, messages: int, api: str) -> list[Sent]:
    return [await send(session, url, sender, message_text(sender, k), api) for k in range(messages)]


@dataclass
class LoadResult:
    sent: list[Sent]
    wall: float
    problems: list[str] = field(default_factory=list)  # what the read-back found wrong

    @property
    def errors(self) -> list[str]:
        return [f"{s.sender}: {s.error}" for s in self.sent if s.error]

    @property
    def unanswered(self) -> list[str]:
        return [f"{s.sender}: {s.text!r}" for s in self.sent if not s.error and not s.answer]

    def summary(self) -> dict:
        seconds = [s.seconds for s in self.sent]
        return {
            "messages": len(self.sent),
            "wall_s": self.wall,
            "messages_per_s": len(self.sent) / self.wall,
            "p50_s": percentile(seconds, 50),
            "p90_s": percentile(seconds, 90),
            "errors": len(self.errors),
            "unanswered": len(self.unanswered),
            "problems": len(self.problems),
        }


def session(**connector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        connector=aiohttp.TCPConnector(limit=0, force_close=False, **connector),
    )


async def run_load(
    url: str, customers: int, messages: int, *, api: str = "stream", prefix: str | None = None
) -> LoadResult:
    """`customers` customers at once, `messages` each; then every conversation read back."""
    prefix = prefix or run_id()
    senders = [f"{prefix}-{i}" for i in range(customers)]
    async with session() as client:
        started = time.monotonic()
        results = await asyncio.gather(*(customer(client, url, s, messages, api) for s in senders))
        wall = time.monotonic() - started
        result = LoadResult([m for ms in results for m in ms], wall)
        result.problems = [p for s in senders for p in await stored_problems(client, url, s, messages)]
    return result


async def stored_problems(client: aiohttp.ClientSession, url: str, sender: str, messages: int) -> list[str]:
    """What is wrong with the stored conversation: each message stored once, in order, each
    followed by the bot's reply (GET /api/conversations/{sender})."""
    async with client.get(f"{url}/api/conversations/{sender}") as response:
        if response.status != 200:
            return [f"{sender}: history answered {response.status}"]
        events = (await response.json())["events"]
    users = [e.get("text") for e in events if e["type"] == "user"]
    expected = [message_text(sender, k) for k in range(messages)]
    problems = []
    if users != expected:
        problems.append(f"{sender}: stored customer messages {users} are not {expected} (once each, in order)")
    types = [e["type"] for e in events if e["type"] in ("user", "bot")]
    if types != ["user", "bot"] * messages:
        problems.append(f"{sender}: stored turns {types} do not alternate message, reply")
    seqs = [e["seq"] for e in events]
    if seqs != sorted(set(seqs)):
        problems.append(f"{sender}: seq {seqs} is not strictly increasing")
    return problems


# -- the server process as the operating system sees it ----------------------------------------


def resident_kb(pid: int) -> int:
    """VmRSS of the process, in kB (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def metric(client: aiohttp.ClientSession, url: str, name: str) -> float:
    """One unlabelled value from /metrics."""
    async with client.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise RuntimeError(f"/metrics has no {name}")


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    tasks: int
    feeds: int


async def sample(pid: int, url: str, t0: float) -> Sample:
    """The process's memory and open files, and its asyncio tasks and open live feeds (from
    /metrics, read on a connection of its own that is closed before the files are counted)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        tasks = int(await metric(client, url, "bot_asyncio_tasks"))
        feeds = int(await metric(client, url, "bot_live_feeds"))
    await asyncio.sleep(0.05)  # let the server close its end of that connection
    return Sample(time.monotonic() - t0, resident_kb(pid), open_fds(pid), tasks, feeds)


async def settle(pid: int, url: str, start: Sample, t0: float, timeout: float = 15.0) -> Sample:
    """Samples until open files and tasks are back at `start`'s level (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        now = await sample(pid, url, t0)
        if (now.fds <= start.fds and now.tasks <= start.tasks) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


# -- live feeds ---------------------------------------------------------------------------------


@asynccontextmanager
async def idle_feeds(url: str, count: int, per_address: int, prefix: str):
    """`count` live feeds held open on conversations nobody writes to, at most `per_address`
    from each of 127.0.0.2, 127.0.0.3, ... (all local addresses on Linux)."""
    addresses = [f"127.0.0.{2 + i}" for i in range(-(-count // per_address))]
    clients = [session(local_addr=(a, 0)) for a in addresses]
    responses = []
    try:

        async def open_one(i: int):
            response = await clients[i // per_address].get(f"{url}/api/conversations/{prefix}-feed-{i}/events")
            if response.status != 200:
                raise RuntimeError(f"feed {i} answered {response.status}: {await response.text()}")
            responses.append(response)

        for start in range(0, count, 100):  # in batches, so the listen backlog is never exceeded
            await asyncio.gather(*(open_one(i) for i in range(start, min(count, start + 100))))
        yield responses
    finally:
        for response in responses:
            response.close()
        for client in clients:
            await client.close()


# -- soak: a steady rate for a long time --------------------------------------------------------


@dataclass
class SoakResult:
    samples: list[Sample]
    start: Sample  # idle, after the warm-up burst
    end: Sample  # idle, after the soak
    sent: list[Sent]


async def soak(
    pid: int,
    url: str,
    *,
    seconds: float,
    rate: float,
    conversations: int = 20,
    turns: int = 5,
    every: float = 5.0,
    with_feeds: bool = True,
    log=None,
) -> SoakResult:
    """`rate` messages a second for `seconds`, spread over `conversations` customers at a time;
    each customer sends `turns` messages (holding its live feed open when `with_feeds`), then a
    new one takes its place. Before: a short burst of the same load, so connection pools are at
    their working size, then the idle level is taken; after: the idle level again."""
    prefix, t0 = run_id(), time.monotonic()
    async with session() as client:  # the warm-up burst
        await asyncio.gather(*(customer(client, url, f"{prefix}-warm-{i}", 2, "stream") for i in range(conversations)))
    await asyncio.sleep(1.0)
    start = await sample(pid, url, t0)
    samples, sent, pending = [start], [], set()
    next_customer, slots = 0, [None] * conversations  # per slot: (sender, messages sent, busy, feed)

    async with session() as client, session() as feeds:

        async def one(slot: int) -> None:
            sender, k, _, feed = slots[slot]
            result = await send(client, url, sender, message_text(sender, k), "stream")
            sent.append(result)
            if k + 1 >= turns:
                if feed is not None:
                    feed.close()
                slots[slot] = None
            else:
                slots[slot] = (sender, k + 1, False, feed)

        async def open_feed(sender: str):
            response = await feeds.get(f"{url}/api/conversations/{sender}/events")
            return response if response.status == 200 else None

        begun, fired, slot, next_sample = time.monotonic(), 0, 0, time.monotonic()
        while (now := time.monotonic()) - begun < seconds:
            if now >= next_sample:
                samples.append(await sample(pid, url, t0))
                if log:
                    log(samples[-1], sent)
                next_sample += every
            due = begun + fired / rate
            if now < due:
                await asyncio.sleep(min(due - now, max(0.0, next_sample - now)))
                continue
            fired += 1
            for _ in range(conversations):  # the next customer not waiting for a reply
                slot = (slot + 1) % conversations
                if slots[slot] is None:
                    sender = f"{prefix}-{next_customer}"
                    next_customer += 1
                    slots[slot] = (sender, 0, False, await open_feed(sender) if with_feeds else None)
                if not slots[slot][2]:
                    slots[slot] = (*slots[slot][:2], True, slots[slot][3])  # busy until its reply is complete
                    task = asyncio.ensure_future(one(slot))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    break
        if pending:
            await asyncio.gather(*pending)
        for entry in slots:
            if entry and entry[3] is not None:
                entry[3].close()
    end = await settle(pid, url, start, t0)
    samples.append(end)
    return SoakResult(samples, start, end, sent)


def memory_growth(result: SoakResult, warmup: float, window: float = 30.0) -> tuple[float, float, float]:
    """(resident kB just after warm-up, at the end of the load, growth as a fraction): the
    median of the samples in the `window` seconds after `warmup`, and of the last `window`."""
    under_load = result.samples[1:-1]
    first = [s.rss_kb for s in under_load if warmup <= s.t - under_load[0].t < warmup + window]
    last = [s.rss_kb for s in under_load if s.t >= under_load[-1].t - window]
    if not first or not last:
        raise ValueError(f"the soak is too short for a {warmup:.0f} s warm-up and {window:.0f} s windows")
    before, after = percentile(first, 50), percentile(last, 50)
    return before, after, after / before - 1
