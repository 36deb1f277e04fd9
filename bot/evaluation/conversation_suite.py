"""Runs conversation tests (bot.data.conversation_tests) through the reply policy customers get:
each test is a conversation of its own, stored as the server stores one (a throwaway SQLite
store), answered by `Conversations.handle` with the model in service, its actions run by the
project's action package in this process (or the test's stubs). Tests run side by side, so the
batching engine batches them as it batches customers.

With `tries` above 1 (sampling at a temperature), each test runs that many times and pass^k
(τ-bench) says how likely k tries in a row all pass: per test C(c, k) / C(n, k) for c passes in
n tries, averaged over the tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from math import comb
from pathlib import Path

from bot.config import Settings
from bot.conversations.events import (
    ACTION,
    ACTION_FAILED,
    ACTION_REJECTED,
    AGENT,
    BOT,
    HANDOFF,
    RESUME,
    USER,
    Event,
)
from bot.conversations.store import SQLiteStore
from bot.data.conversation_tests import Assertion, ConversationTest, Step
from bot.engine.response_model import ResponseModel
from bot.errors import BotError
from bot.evaluation.assertions import call_text, failure
from bot.evaluation.invented import invented_names, invented_values
from bot.policy.reply import ReplyPolicy
from bot.runtime.action_runner import InProcessActions
from bot.runtime.model_holder import ModelHolder
from bot.runtime.processor import Conversations


class ActionPackageMissing(BotError):
    """The project's action package can't be imported for the conversation tests."""


@dataclass
class ConversationRun:
    """One try of one test."""

    test: ConversationTest
    attempt: int
    failures: list[str] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    temperature: float = 0.0  # the model's: 0 for the greedy run
    invented_values: list[str] = field(default_factory=list)  # grounded values sent that nobody gave
    invented_names: list[str] = field(default_factory=list)  # names the bot used that nobody gave

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None

    def to_json(self) -> dict:
        spec = self.test.spec
        return {
            "test": spec.test_case,
            "where": self.test.where,
            "tags": list(spec.tags),
            "attempt": self.attempt,
            "passed": self.passed,
            "failures": self.failures,
            "error": self.error,
            "transcript": self.transcript,
            "seconds": round(self.seconds, 2),
            "temperature": self.temperature,
            "invented_values": self.invented_values,
            "invented_names": self.invented_names,
        }


def describe(event: Event) -> str | None:
    """One line of a test's transcript: what the customer, the bot, an action or an agent did."""
    kind = event["type"]
    if kind == USER:
        return f"customer: {event.get('text') or ''}"
    if kind == BOT:
        if event.get("text"):
            return f"bot: {event['text']}"
        buttons = [b.get("title", "") for b in event.get("buttons") or [] if isinstance(b, dict)]
        return f"bot: [buttons: {' | '.join(buttons)}]" if buttons else "bot: [image]"
    if kind == ACTION:
        result = json.dumps(event.get("result"), ensure_ascii=False)
        result = result if len(result) <= 200 else result[:197] + "..."
        return f"action {call_text(event['name'], event.get('arguments') or {})} -> {result}"
    if kind == ACTION_REJECTED:
        problems = "; ".join(event.get("problems") or [])
        return f"refused {call_text(event['name'], event.get('arguments') or {})}: {problems}"
    if kind == ACTION_FAILED:
        return f"failed {call_text(event['name'], event.get('arguments') or {})}: {event.get('error')}"
    if kind == HANDOFF:
        return f"handoff by {event.get('by')}: {event.get('reason') or ''}"
    if kind == AGENT:
        return f"agent: {event.get('text') or ''}"
    if kind == RESUME:
        return "agent hands back to the bot"
    return None


def _step_label(number: int, step: Step) -> str:
    said = step.user or step.agent or ""
    short = said if len(said) <= 60 else said[:57] + "..."
    return f"step {number} ({step.kind}: {short!r})" if said else f"step {number} ({step.kind})"


def _check(assertions: list[Assertion], events: list[Event], label: str) -> list[str]:
    return [f"{label}: {why}" for a in assertions if (why := failure(a, events))]


async def _play(conversations: Conversations, run: ConversationRun, sender: str, known: str) -> None:
    everything: list[Event] = []
    for number, step in enumerate(run.test.spec.steps, 1):
        events: list[Event] = []
        if step.kind == "user":
            async with aclosing(conversations.handle(sender, step.user)) as items:
                async for item in items:
                    if isinstance(item, dict):
                        events.append(item)
        elif step.kind == "agent":
            message, taken = await conversations.write_as_agent(sender, step.agent, "Agent")
            events += [taken, message] if taken else [message]
        else:
            events.append(await conversations.give_back(sender))
        everything += events
        run.transcript += [line for e in events if (line := describe(e))]
        run.failures += _check(step.assertions, events, _step_label(number, step))
    run.failures += _check(run.test.spec.assertions, everything, "at the end")
    model = conversations.holder.current
    run.invented_values = invented_values(everything, model.profile.actions)
    run.invented_names = invented_names(everything, known)


DEFAULT_PACKAGE = "actions"  # the folder `bot serve --actions actions` runs


def import_actions(settings: Settings, package: str | None, stubs: dict) -> InProcessActions:
    """The action package (by default the project's `actions/`, if it has one), importable from
    the project's folder as `bot serve --actions` finds it."""
    if package is None:
        package = DEFAULT_PACKAGE if (settings.root / DEFAULT_PACKAGE).is_dir() else None
    root = str(settings.root.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return InProcessActions(package, tracker_events=settings.endpoints.action_endpoint.tracker_events, stubs=stubs)
    except ImportError as e:
        raise ActionPackageMissing(
            f"the action package '{package}' can't be imported from {root}: {e} (name another with --actions)"
        ) from None


async def run_tests(
    settings: Settings,
    model: ResponseModel,
    tests: list[ConversationTest],
    *,
    tries: int = 1,
    package: str | None = None,
    on_run: Callable[[ConversationRun], None] | None = None,
    known: str = "",
) -> list[ConversationRun]:
    """Every test `tries` times with `model` (its engine and temperature as they are); the runs
    in the order of `tests`, each test's tries together. `known`: names the bot may use without
    anyone giving them (its own, its company's)."""
    stubs: dict[str, dict] = {}
    actions = import_actions(settings, package, stubs)
    serve = settings.build.serve
    runs = [
        ConversationRun(test, n, temperature=model.sampling.temperature) for test in tests for n in range(1, tries + 1)
    ]
    room = asyncio.Semaphore(serve.max_batch)  # conversations at once: what the engine batches
    with tempfile.TemporaryDirectory(prefix="bot-test-") as folder:
        store = SQLiteStore(Path(folder) / "conversations.sqlite3", synchronous="normal")
        conversations = Conversations(store, ModelHolder(model), ReplyPolicy(serve, actions), serve)

        async def one(index: int, run: ConversationRun) -> None:
            sender = f"test-{index}-{run.test.name}"
            stubs[sender] = run.test.stubs()
            async with room:
                started = time.monotonic()
                try:
                    await _play(conversations, run, sender, known)
                except BotError as e:  # the model or a store failed: this run fails, with the reason
                    run.error = f"{type(e).__name__}: {e}"
                run.seconds = time.monotonic() - started
            if on_run:
                on_run(run)

        try:
            await asyncio.gather(*(one(i, run) for i, run in enumerate(runs)))
        finally:
            await store.close()
    return runs


def pass_hat(runs: list[ConversationRun], k: int) -> float | None:
    """τ-bench's pass^k: per test C(c, k) / C(n, k), averaged; None when a test has fewer than k tries."""
    tally: dict[str, list[int]] = {}
    for run in runs:
        counts = tally.setdefault(run.test.name, [0, 0])
        counts[0] += run.passed
        counts[1] += 1
    if not tally or any(n < k for _, n in tally.values()):
        return None
    return sum(comb(c, k) / comb(n, k) for c, n in tally.values()) / len(tally)


def summary(runs: list[ConversationRun], tries: int, temperature: float, seconds: float) -> dict:
    """A mode's figures: tests, passes of the first try, pass rate and pass^1..pass^tries."""
    first = [r for r in runs if r.attempt == 1]
    return {
        "tests": len(first),
        "passed": sum(r.passed for r in first),
        "pass_rate": sum(r.passed for r in first) / len(first) if first else None,
        "tries": tries,
        "temperature": temperature,
        "pass_hat": {str(k): pass_hat(runs, k) for k in range(1, tries + 1)},
        "seconds": round(seconds, 1),
        "invented_values": sum(len(r.invented_values) for r in runs),
        "invented_names": sum(len(r.invented_names) for r in runs),
    }


def mode_model(settings: Settings, mode: str, data, weights) -> ResponseModel:
    """`weights` (bot.engine.weights.Weights: the trained model for fine-tuned, its base otherwise)
    served as in `mode`: the prompting modes hold the conversation with example dialogues in the
    system prompt. On the engine `serve.engine` names, with the tool-call constraint."""
    from dataclasses import replace

    from bot.engine.weights import start_engine
    from bot.evaluation.cases import mode_system_prompt

    cfg, max_length = settings.build.eval, settings.build.model.max_length
    budget = max_length - settings.build.serve.max_new_tokens
    system = mode_system_prompt(mode, data, weights.profile.system_prompt, weights.tokenizer, cfg.few_shot_k, budget)
    weights = replace(weights, profile=replace(weights.profile, system_prompt=system))
    engine = start_engine(weights, settings.build.serve, max_length)
    model_id = weights.trained.id if weights.trained and mode == "fine-tuned" else None
    return ResponseModel(engine, weights.tokenizer, weights.profile, model_id, max_length)
