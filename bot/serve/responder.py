"""Answering one customer message: the model writes a reply, an action call or a handoff; an
action's result goes back into the context and the model writes again, as it learned in
training. Transport-free: the HTTP routes, `bot chat` and the OpenAI route all use it.

`answer` yields `Piece`s (text of a bot message as it is generated) and events (dicts, see
bot.serve.store) to be stored and shown: `bot`, `action`, `action_failed`, `action_rejected`,
`slot`, `handoff`, `guarded`, `model_unavailable` (a remote model server gave no reply: the
customer gets the apology and the offer of a person, as for a failed action).

Every text a customer could see passes the leak guard (bot.serve.leak_guard) first: streamed
pieces, each bot message (the model's, an action's), the handoff message, and a tool call's
arguments before the action runs. What would leak is stopped: the generation ends, the customer
gets the persona's refusal (a `bot` event `by: leak_guard`), and a `guarded` event records what
kind of leak it was and where (never the text).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from bot.config import ServeConfig
from bot.data.compile import tool_call_message
from bot.data.grounding import ungrounded
from bot.data.person_requests import PERSON_ASKED, last_user_text
from bot.data.prompt import TOOL_CALL_OPEN
from bot.data.schema import HANDOFF_TOOL
from bot.engine.protocol import Finished
from bot.engine.remote import ModelServerUnavailable
from bot.rendering import parse_reply
from bot.serve.events import (
    ACTION,
    AGENT,
    BOT,
    HANDOFF,
    MODEL_UNAVAILABLE,
    RESET_SLOTS,
    RESUME,
    SLOT,
    USER,
    Event,
    action_failed,
    action_rejected,
    bot_message,
    handed_off,
    leak_guarded,
    model_unavailable,
)
from bot.serve.generator import ResponseModel
from bot.serve.leak_guard import Leak

log = logging.getLogger("bot.serve")

GUARD = "leak_guard"  # `by` of the refusal that stands in for what the leak guard stopped
NOT_UNDERSTOOD = "Sorry, I didn't catch that. Could you say it another way?"
UNGROUNDED = "ungrounded"  # the reason of an action_rejected event whose values the customer never gave
COULD_NOT_DO = "Sorry, I couldn't do that just now. Would you like me to pass you to a member of our team?"


@dataclass(frozen=True)
class Piece:
    """Part of a bot message, as the model writes it."""

    text: str


@dataclass
class ConversationState:
    slots: dict[str, Any] = field(default_factory=dict)
    handed_off: bool = False
    handoff_reason: str | None = None
    recent: list[Event] = field(default_factory=list)  # the latest events, for an action's tracker

    def apply(self, event: Event) -> None:
        """Takes in one more event of the conversation."""
        if event["type"] == SLOT:
            self.slots[event["name"]] = event.get("value")
        elif event["type"] == RESET_SLOTS:
            self.slots.clear()
        elif event["type"] == HANDOFF:
            self.handed_off, self.handoff_reason = True, event.get("reason")
        elif event["type"] == RESUME:
            self.handed_off = False


def fold(events: list[Event]) -> ConversationState:
    """The state a conversation's events add up to."""
    state = ConversationState(recent=events)
    for event in events:
        state.apply(event)
    return state


def conversation_sources(messages: list[dict]) -> list[str]:
    """What the customer wrote and what actions returned: where a grounded argument must come from."""
    return [m.get("content") or "" for m in messages if m["role"] in ("user", "tool")]


def to_messages(events: list[Event], system_prompt: str) -> list[dict]:
    """A stored conversation as the model's context, in the training format (bot.data.compile)."""
    messages: list[dict] = [{"role": "system", "content": system_prompt}]
    for event in events:
        kind = event["type"]
        if kind == USER:
            messages.append({"role": "user", "content": event["text"]})
        elif kind in (BOT, AGENT):  # an agent speaks for the company, as the bot does
            messages.append({"role": "assistant", "content": event["text"]})
        elif kind == ACTION:
            call_id = f"call_{event.get('seq', len(messages))}"
            messages.append(tool_call_message(call_id, event["name"], event.get("arguments", {})))
            result = json.dumps(event.get("result"), ensure_ascii=False)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        elif kind == HANDOFF and event.get("by") in ("model", "rule"):
            call_id = f"call_{event.get('seq', len(messages))}"
            messages.append(tool_call_message(call_id, HANDOFF_TOOL, {"reason": event.get("reason", "")}))
    return messages


class VisibleText:
    """What of a streamed reply a customer may see: nothing while the reply may still be a tool
    call, then the text up to any tool-call tag. The tail that could be the start of a tag is
    held back until the next piece shows it isn't."""

    def __init__(self):
        self.held = ""
        self.started = False  # the reply is text, not a call
        self.cut = False  # a tag came: nothing more is shown

    def feed(self, piece: str) -> str:
        if self.cut:
            return ""
        self.held += piece
        if not self.started:
            lead = self.held.lstrip()
            if TOOL_CALL_OPEN.startswith(lead) or lead.startswith(TOOL_CALL_OPEN):
                return ""
            self.started, self.held = True, lead
        at = self.held.find(TOOL_CALL_OPEN)
        if at >= 0:
            self.cut = True
            return self.held[:at]
        keep = next((k for k in range(len(TOOL_CALL_OPEN) - 1, 0, -1) if self.held.endswith(TOOL_CALL_OPEN[:k])), 0)
        shown, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return shown

    def flush(self) -> str:
        """At the end of the reply: what was held back, unless it belongs to a call."""
        shown = self.held if self.started and not self.cut else ""
        self.held = ""
        return shown


def _argument_label(name: str) -> str:
    """An argument's name as the customer reads it: order_id is "order number"."""
    if name.endswith("_id"):
        return name.removesuffix("_id") + " number"
    return name.replace("_", " ")


def asked_for(arguments: list[str]) -> str:
    """The question that asks the customer for values the model would have made up."""
    labels = [_argument_label(name) for name in arguments]
    wanted = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
    return f"To do that I need your {wanted}. Could you tell me, please?"


class ModelHolder:
    """The model in service. A reload swaps in a new one: answers already running finish with
    the model they started with, and the old model's engine is closed once the last one ends."""

    def __init__(self, model: ResponseModel):
        self.current = model
        self._users: dict[int, int] = {}  # id(model) -> answers using it
        self._retired: dict[int, asyncio.Event] = {}  # id(model) -> set once it is closed

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[ResponseModel]:
        model = self.current  # taken and counted with no await in between: a swap can't slip in
        key = id(model)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield model
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                if key in self._retired:
                    await model.close()
                    self._retired.pop(key).set()

    async def swap(self, model: ResponseModel) -> ResponseModel:
        """Serve `model` from now on; returns the previous one once it is closed (after the
        answers still using it have finished)."""
        previous, self.current = self.current, model
        key = id(previous)
        if self._users.get(key):
            closed = self._retired[key] = asyncio.Event()
            await closed.wait()
        else:
            await previous.close()
        return previous

    async def close(self) -> None:
        await self.current.close()


class Responder:
    def __init__(self, holder: ModelHolder, config: ServeConfig, actions, *, metrics=None):
        self.holder = holder
        self.config = config
        self.actions = actions  # bot.serve.actions.ActionRunner
        self.metrics = metrics

    async def _generate(self, model: ResponseModel, messages: list[dict]) -> AsyncIterator[Piece | Finished | Leak]:
        """Streams a bot message; holds text back while it may still turn out to be a tool call,
        which the customer never sees, or grow into a leak. A leak ends the generation: the
        `Leak` is the last item."""
        visible = VisibleText()
        watch = model.leak_guard.stream()
        async with aclosing(model.stream(messages, self.config.max_new_tokens)) as pieces:
            async for item in pieces:
                if isinstance(item, Finished):
                    if self.metrics:
                        self.metrics.generated(item)
                    rest = watch.feed(visible.flush()) + watch.flush()
                    if watch.leak:
                        yield watch.leak
                        return
                    if rest:
                        yield Piece(rest)
                    yield item
                    return
                shown = watch.feed(visible.feed(item))
                if watch.leak:
                    yield watch.leak
                    return  # leaving closes the model's stream: the generation stops here
                if shown:
                    yield Piece(shown)

    def _guarded(self, sender: str, leak: Leak, where: str, **detail) -> Event:
        """Records a cut (log line, metric); the `guarded` event to store."""
        stopped = where.replace("_", " ")
        log.warning(
            "conversation %s: the leak guard stopped a %s that would have shown the %s", sender, stopped, leak.kind
        )
        if self.metrics:
            self.metrics.guarded.labels(kind=leak.kind, where=where).inc()
        return leak_guarded(leak.kind, where, leak.encoding, **detail)

    def _screen(self, model: ResponseModel, sender: str, event: Event) -> list[Event]:
        """A message on its way to the customer, checked: as it is, or the refusal instead."""
        guard = model.leak_guard
        if event["type"] == HANDOFF:
            checked = []
            if leak := guard.find(event.get("text") or ""):
                checked.append(self._guarded(sender, leak, "handoff_message"))
                event = dict(event, text=guard.refusal)
            if leak := guard.find(event.get("reason") or ""):  # agents read it; keep it clean too
                checked.append(self._guarded(sender, leak, "handoff_reason"))
                event = dict(event, reason="")
            return checked + [event]
        if leak := guard.find_in([event.get(key) for key in ("text", "buttons", "image")]):
            by = event.get("by")  # the action whose message it is, if any
            if by:
                cut = self._guarded(sender, leak, "action_message", action=by)
            else:
                cut = self._guarded(sender, leak, "reply")
            return [cut, bot_message(guard.refusal, by=GUARD)]
        return [event]

    async def answer(
        self, model: ResponseModel, messages: list[dict], *, sender: str, state: ConversationState, latest: Event
    ) -> AsyncIterator[Piece | Event]:
        """`messages` starts with the system prompt and ends with the customer's message. One
        model (borrowed from the holder) writes the whole answer, even if a reload happens
        meanwhile. Every message passes the leak guard on its way out."""
        async with aclosing(self._answer(model, messages, sender=sender, state=state, latest=latest)) as items:
            async for item in items:
                if isinstance(item, dict) and item["type"] in (BOT, HANDOFF) and item.get("by") != GUARD:
                    for event in self._screen(model, sender, item):
                        yield event
                else:
                    yield item

    async def _answer(
        self, model: ResponseModel, messages: list[dict], *, sender: str, state: ConversationState, latest: Event
    ) -> AsyncIterator[Piece | Event]:
        messages = list(messages)
        if model.profile.person_rule.asks_for_person(last_user_text(messages)):
            yield handed_off("rule", PERSON_ASKED, text=model.profile.handoff_message)
            return
        for step in range(self.config.max_actions_per_message + 1):
            generated = leak = None
            try:
                async with aclosing(self._generate(model, messages)) as items:
                    async for item in items:
                        if isinstance(item, Finished):
                            generated = item
                        elif isinstance(item, Leak):
                            leak = item
                        else:
                            yield item
            except ModelServerUnavailable as e:  # as for a failed action: an apology and the offer of a person
                log.warning("conversation %s: no reply: %s", sender, e)
                if self.metrics:
                    self.metrics.model_server_failures.inc()
                yield model_unavailable(str(e))
                # stands in for any text streamed before the break
                yield bot_message(COULD_NOT_DO, by=MODEL_UNAVAILABLE)
                return
            if leak:
                yield self._guarded(sender, leak, "reply")
                yield bot_message(model.leak_guard.refusal, by=GUARD)
                return
            reply = parse_reply(generated.text)
            if reply.broken_call is not None:  # opened a call and never finished it well: a failed call
                log.warning(
                    "conversation %s: a malformed tool call (%s): %.200s", sender, generated.finish_reason, reply.text
                )
                if reply.broken_call == HANDOFF_TOOL:
                    yield handed_off("model", "", text=model.profile.handoff_message)
                    return
                yield action_failed(reply.broken_call, {}, f"malformed tool call ({generated.finish_reason})")
                yield bot_message(COULD_NOT_DO)
                return
            if reply.handoff:
                reason = str((reply.arguments or {}).get("reason", ""))
                yield handed_off("model", reason, text=model.profile.handoff_message)
                return
            if not reply.calls_action:
                yield bot_message(reply.text or NOT_UNDERSTOOD)
                return
            name, arguments = reply.action, reply.arguments or {}
            if leak := model.leak_guard.find_in(arguments):  # never sent: an action may echo its arguments
                yield self._guarded(sender, leak, "tool_call", action=name)
                yield bot_message(model.leak_guard.refusal, by=GUARD)
                return
            problems = model.profile.argument_problems(name, arguments)
            if problems or step == self.config.max_actions_per_message:
                # Never run: the call doesn't match its declaration, or this message had its share of actions.
                if problems:
                    refused = action_rejected(name, arguments, problems)
                else:
                    refused = action_failed(name, arguments, "too many actions for one message")
                why = "; ".join(problems) or refused["error"]
                log.warning("conversation %s: not running %s(%s): %s", sender, name, json.dumps(arguments), why)
                yield refused
                yield bot_message(COULD_NOT_DO)
                return
            invented = ungrounded(model.profile.actions[name], arguments, conversation_sources(messages))
            if invented:  # never sent: the customer is asked for the value instead
                called, made_up = json.dumps(arguments), ", ".join(invented)
                log.warning(
                    "conversation %s: not running %s(%s): %s not from the conversation", sender, name, called, made_up
                )
                problems = [f"'{a}' {json.dumps(arguments[a])} appears nowhere in the conversation" for a in invented]
                yield action_rejected(name, arguments, problems, reason=UNGROUNDED)
                yield bot_message(asked_for(invented))
                return
            outcome = await self.actions.run(
                name, arguments, sender=sender, state=state, latest=latest, profile=model.profile
            )
            for event in outcome.events:
                state.apply(event)  # a later action in this message sees its slots (and resets)
                yield event
            if outcome.failed:
                return
            messages += to_messages([outcome.action_event], "")[1:]
            if outcome.handoff:
                yield handed_off("action", f"action {name} asked for a person", text=model.profile.handoff_message)
                return
