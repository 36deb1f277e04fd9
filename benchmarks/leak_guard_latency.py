"""What the leak guard adds to the time to first token, with and without it in the same run.

    .venv/bin/python benchmarks/leak_guard_latency.py [--project .] [--token-ms 39] [--limit N]

Every bot reply of the project's held-out and training dialogues is written by the scripted
engine (tests/serve_support.py: the real tokenizer, detokenizer and `Finished` record, one token
every --token-ms, by default the speed of one customer on the batching engine on a 2-core CPU),
and answered through `ReplyPolicy.answer`, as the server does, twice: once with the model's leak
guard and once with a guard that lets everything through, alternating which goes first. The first
token is the first text a customer would be sent. The guard can only delay it by holding words
back (until the next token shows they can't be the start of a run of the prompt or of the secret)
and by its own CPU time, measured apart at the end. Target: at most 50 ms added.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from contextlib import aclosing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serve_support import ScriptedEngine  # noqa: E402

from bot.base_model import load_tokenizer  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.conversations.events import user_message  # noqa: E402
from bot.conversations.state import ConversationState  # noqa: E402
from bot.data.loader import read_training_data  # noqa: E402
from bot.data.profile import profile_of  # noqa: E402
from bot.data.schema import BotTurn  # noqa: E402
from bot.engine.response_model import ResponseModel  # noqa: E402
from bot.policy.reply import Piece, ReplyPolicy  # noqa: E402

MESSAGE = "Hi, can you help me with something?"


class NoGuard:
    """Lets everything through: the baseline."""

    refusal = ""

    def find(self, text):
        return None

    def find_in(self, value):
        return None

    def stream(self):
        return self

    leak = None

    def feed(self, piece):
        return piece

    def flush(self):
        return ""


async def first_token(policy: ReplyPolicy, model: ResponseModel, reply: str) -> float:
    """Seconds from the customer's message to the first text sent, for one scripted reply."""
    model.engine.replies.append(reply)
    messages = [{"role": "system", "content": model.profile.system_prompt}, {"role": "user", "content": MESSAGE}]
    started = time.perf_counter()
    answer = policy.answer(model, messages, sender="bench", state=ConversationState(), latest=user_message(MESSAGE))
    async with aclosing(answer) as items:
        async for item in items:
            if isinstance(item, Piece) or (isinstance(item, dict) and item.get("text")):
                return time.perf_counter() - started
    raise RuntimeError(f"no text for reply {reply!r}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def guard_cpu(guard, tokenizer, replies: list[str]) -> tuple[float, float]:
    """Microseconds per streamed piece and per whole-reply check, no waiting in between."""
    pieces = [[tokenizer.decode([t]) for t in tokenizer(r, add_special_tokens=False)["input_ids"]] for r in replies]
    started = time.perf_counter()
    for reply in pieces:
        watch = guard.stream()
        for piece in reply:
            watch.feed(piece)
        watch.flush()
    per_piece = (time.perf_counter() - started) / sum(map(len, pieces)) * 1e6
    started = time.perf_counter()
    for reply in replies:
        guard.find(reply)
    return per_piece, (time.perf_counter() - started) / len(replies) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--token-ms", type=float, default=39.0, help="time per generated token (39 ms: 25.8 tokens/s)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many replies (0: all)")
    args = parser.parse_args()

    settings = load_settings(args.project)
    data, problems = read_training_data(settings.data_dir, settings.root)
    if problems:
        sys.exit(f"{len(problems)} problems in the training data: run 'bot data validate'")
    profile = profile_of(data)
    held_out = [t.bot for d in data.test for t in d.turns if isinstance(t, BotTurn)]
    training = [t.bot for d in data.train for t in d.turns if isinstance(t, BotTurn)]
    replies = (held_out + training)[: args.limit or None]
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    model = ResponseModel(
        ScriptedEngine(tokenizer, [], delay=args.token_ms / 1000),
        tokenizer,
        profile,
        "bench",
        settings.build.model.max_length,
    )
    guard = model.leak_guard
    policy = ReplyPolicy(settings.build.serve, actions=None)

    for reply in replies[:3]:  # warm-up: the tokenizer's and the event loop's first calls
        await first_token(policy, model, reply)
    times = {"without": [], "with": []}
    for i, reply in enumerate(replies):
        for arm in ("without", "with") if i % 2 else ("with", "without"):
            model.leak_guard = guard if arm == "with" else NoGuard()
            times[arm].append(await first_token(policy, model, reply))
    added = [(w - wo) * 1000 for w, wo in zip(times["with"], times["without"], strict=True)]
    later = sum(a > args.token_ms / 2 for a in added)

    print(
        f"replies: {len(replies)} ({min(len(held_out), len(replies))} held-out, the rest training); "
        f"one token every {args.token_ms:g} ms"
    )
    for arm in ("without", "with"):
        ms = [t * 1000 for t in times[arm]]
        print(
            f"first token {arm:>7} the guard: "
            f"mean {statistics.mean(ms):6.1f} ms, median {statistics.median(ms):6.1f} ms, "
            f"p90 {percentile(ms, 0.9):6.1f} ms"
        )
    print(
        f"added by the guard: mean {statistics.mean(added):+.1f} ms, median {statistics.median(added):+.1f} ms, "
        f"p90 {percentile(added, 0.9):+.1f} ms, max {max(added):+.1f} ms; "
        f"ratio of means {statistics.mean(times['with']) / statistics.mean(times['without']):.3f}"
    )
    print(f"replies whose first text waited for at least one more token: {later} of {len(replies)}")
    per_piece, per_reply = guard_cpu(guard, tokenizer, replies)
    print(f"the guard's own CPU time: {per_piece:.1f} us per streamed piece, {per_reply:.1f} us per whole-reply check")
    target = statistics.mean(added) <= 50
    print(f"target (at most 50 ms added on average): {'met' if target else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
