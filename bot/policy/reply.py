"""The reply policy: one customer message (or an action's result) in, the bot's steps out. The
model writes a reply, an action call or a handoff; an action's result goes back into the
context and the model writes again, as it learned in training. Everything that produces a bot
step runs this code: the server and `bot chat` (`answer`), `bot eval` and `bot tune` (`first_step`,
the first step of an answer, scored against the reference), and the conversation tests.

What the policy decides, in order:
- the person rule: a customer who asks for a person is handed off before the model answers;
- the model's own handoff goes ahead after an action's result or when the bot's last message
  offered a person; where it would come out of the blue, the model is asked again with the
  handoff ruled out, and a call of an action it then makes goes ahead; otherwise the bot offers
  a person (the persona's `handoff_offer`), and the customer's yes gets the handoff;
- the model writes, its tool calls kept well-formed by the engine's tool-call constraint;
- a call is checked against its declaration (argument names, types, enums), then its grounded
  arguments (`from: conversation`) against what the customer wrote and what actions returned;
  a call of an action the conversation holds no value for is asked again without that action
  (a call that acts on the customer's words runs), or, where words may do, for words alone;
- at most `max_actions_per_message` actions run for one customer message, and none twice with
  the same arguments: after the last one, or instead of a repeat, the model writes text;
- the leak guard checks every text a customer could see.

`answer` yields `Piece`s (text of a bot message as it is generated), `Status`es (what the
customer sees while an action is called: its `status` text, never stored) and events (dicts, see
bot.conversations.events) to be stored and shown: `bot`, `action`, `action_failed`, `action_rejected`,
`slot`, `handoff`, `guarded`, `model_unavailable` (a remote model server gave no reply: the
customer gets the apology and the offer of a person, as for a failed action).

Every text a customer could see passes the leak guard (bot.data.leak_guard) first: streamed
pieces, each bot message (the model's, an action's), the handoff message, and a tool call's
arguments before the action runs. What would leak is stopped: the generation ends, the customer
gets the persona's refusal (a `bot` event `by: leak_guard`), and a `guarded` event records what
kind of leak it was and where (never the text).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from bot.config import ServeConfig
from bot.conversations.events import (
    BOT,
    GUARD,
    HANDOFF,
    MODEL_UNAVAILABLE,
    OFFER,
    UNGROUNDED,
    Event,
    action_failed,
    action_rejected,
    bot_message,
    handed_off,
    leak_guarded,
    model_unavailable,
)
from bot.conversations.state import ConversationState
from bot.data.grounding import grounded_values, ungrounded
from bot.data.leak_guard import Leak
from bot.data.person_requests import PERSON_ASKED, last_user_text
from bot.data.prompt import TOOL_CALL_OPEN
from bot.data.schema import HANDOFF_TOOL
from bot.engine.protocol import Finished
from bot.engine.remote import ModelServerUnavailable
from bot.engine.response_model import ResponseModel
from bot.policy.context import conversation_sources, customer_messages, handoff_unprompted, to_messages
from bot.rendering import BotStep, handoff_step, parse_reply, tool_call_text

log = logging.getLogger("bot.policy")

CALL_NAME = re.compile(r'"name"\s*:\s*"([^"\\]+)"')  # in a tool call being written
NOT_UNDERSTOOD = "Sorry, I didn't catch that. Could you say it another way?"
COULD_NOT_DO = "Sorry, I couldn't do that just now. Would you like me to pass you to a member of our team?"


@dataclass(frozen=True)
class Piece:
    """Part of a bot message, as the model writes it."""

    text: str


@dataclass(frozen=True)
class Status:
    """What the customer may see while the bot calls an action: the action's `status` text, sent
    as soon as the call's name is written, never stored."""

    text: str
    action: str


@dataclass(frozen=True)
class Call:
    """A call of a declared action that passed every check: it may run."""

    name: str
    arguments: dict


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

    def calling(self) -> str | None:
        """The action the reply calls, once its name is written (None while it isn't, or for text)."""
        if self.started:
            return None
        found = CALL_NAME.search(self.held)
        return found.group(1) if found else None

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


def acts_on(arguments: dict, message: str) -> bool:
    """Whether a call's arguments take a value the customer's message holds (letter case and
    spaces aside): "argh sorry, KM-120448" for check_order(order_id="KM-120448")."""

    def plain(text: str) -> str:
        return "".join(text.lower().split())

    said = plain(message)
    return any(plain(str(value)) and plain(str(value)) in said for value in arguments.values())


def step_of(items: list[Piece | Event | Call]) -> BotStep:
    """What one step of the policy amounts to, as evaluation scores it: the call it lets run, the
    handoff, or else the last message the customer sees."""
    for item in items:
        if isinstance(item, Call):
            return BotStep(tool_call_text(item.name, item.arguments), item.name, item.arguments)
        if isinstance(item, dict) and item["type"] == HANDOFF:
            return handoff_step(item.get("reason") or "")
    shown = [item.get("text") or "" for item in items if isinstance(item, dict) and item["type"] == BOT]
    return BotStep(shown[-1] if shown else "")


class ReplyPolicy:
    """`actions`: the action runner (bot.runtime.action_runner.ActionRunner, or the in-process one of the
    conversation tests); None where no action may run (`first_step` only)."""

    def __init__(self, config: ServeConfig, actions=None, *, metrics=None):
        self.config = config
        self.actions = actions
        self.metrics = metrics

    # -- the whole answer to a customer message ------------------------------------------------
    async def answer(
        self, model: ResponseModel, messages: list[dict], *, sender: str, state: ConversationState, latest: Event
    ) -> AsyncIterator[Piece | Event]:
        """`messages` starts with the system prompt and ends with the customer's message. One
        model writes the whole answer. Every message passes the leak guard on its way out."""
        messages = list(messages)
        ran: set[str] = set()  # the calls run for this message
        last = False
        while True:
            call = None
            last = last or len(ran) == self.config.max_actions_per_message
            async with aclosing(self.step(model, messages, sender=sender, first=not ran, last=last)) as items:
                async for item in items:
                    if isinstance(item, Call):
                        call = item
                    else:
                        yield item
            if call is None:
                return
            called = json.dumps([call.name, call.arguments], sort_keys=True)
            if called in ran:  # its result is in the context already: the model answers in words instead
                log.info(
                    "conversation %s: %s called again with the same arguments; answering in text", sender, call.name
                )
                last = True
                continue
            ran.add(called)
            outcome = await self.actions.run(
                call.name, call.arguments, sender=sender, state=state, latest=latest, profile=model.profile
            )
            for event in outcome.events:
                state.apply(event)  # a later action in this message sees its slots (and resets)
                for shown in self._screen(model, sender, event):
                    yield shown
            if outcome.failed:
                return
            messages += to_messages([outcome.action_event], "")[1:]
            if outcome.handoff:
                asked = handed_off(
                    "action", f"action {call.name} asked for a person", text=model.profile.handoff_message
                )
                for shown in self._screen(model, sender, asked):
                    yield shown
                return

    async def first_step(self, model: ResponseModel, messages: list[dict], *, sender: str = "evaluation") -> BotStep:
        """The bot's first step in answer to the last message of `messages`, with nothing run:
        what `bot eval` and `bot tune` score against the reference step."""
        items = []
        async with aclosing(self.step(model, messages, sender=sender, first=True, last=False)) as steps:
            async for item in steps:
                items.append(item)
        return step_of(items)

    # -- one step ------------------------------------------------------------------------------
    async def step(
        self, model: ResponseModel, messages: list[dict], *, sender: str, first: bool, last: bool
    ) -> AsyncIterator[Piece | Event | Call]:
        """One step: Pieces of the reply, the events it decides (screened by the leak guard), and,
        when the model called an action that may run, a final `Call`. `first`: the step answers
        the customer's message itself (the person rule applies); `last`: no action may run, so
        the model writes text (an engine with the tool-call constraint can't open a call)."""
        async with aclosing(self._step(model, messages, sender=sender, first=first, last=last)) as items:
            async for item in items:
                if isinstance(item, dict):
                    for event in self._screen(model, sender, item):
                        yield event
                else:
                    yield item

    async def _step(
        self, model: ResponseModel, messages: list[dict], *, sender: str, first: bool, last: bool
    ) -> AsyncIterator[Piece | Event | Call]:
        if first and model.profile.person_detector.asks_for_person(last_user_text(messages)):
            yield handed_off("rule", PERSON_ASKED, text=model.profile.handoff_message)
            return
        generated = leak = None
        try:
            async with aclosing(self._generate(model, messages, text_only=last)) as items:
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
            yield bot_message(COULD_NOT_DO, by=MODEL_UNAVAILABLE)  # stands in for any text streamed before the break
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
                for item in await self._model_handoff(model, messages, sender, "", last=last):
                    yield item
                return
            yield action_failed(reply.broken_call, {}, f"malformed tool call ({generated.finish_reason})")
            yield bot_message(COULD_NOT_DO)
            return
        if reply.handoff:
            reason = str((reply.arguments or {}).get("reason", ""))
            for item in await self._model_handoff(model, messages, sender, reason, last=last):
                yield item
            return
        if not reply.calls_action:
            yield bot_message(reply.text or NOT_UNDERSTOOD)
            return
        for item in await self._call(model, messages, sender, reply.action, reply.arguments or {}, last=last):
            yield item

    async def _call(
        self, model: ResponseModel, messages: list[dict], sender: str, name: str, arguments: dict, *, last: bool
    ) -> list[Event | Call]:
        """The model's call, checked. A call of an action the conversation holds no value for
        (every grounded argument of it made up: "KM-120448 update pls" read as an outage check
        with an invented postcode) makes the policy ask the model again with that action ruled
        out; a call it then makes goes ahead if it passes the checks and acts on what the
        customer has just written; if not, and words may do (`_words_may_do`), a reply in words
        is shown ("ta" needs no call), the model asked once more for words alone if it made
        another call. Otherwise the customer is asked for the missing values."""
        checked = self._checked_call(model, messages, sender, name, arguments, last=last)
        if last or not self._nothing_to_copy(model, messages, name, checked):
            return checked
        log.info("conversation %s: %s takes no value the conversation holds: asking again without it", sender, name)
        again = await self._again(model, messages, sender, excluded=(name,))
        if again is not None and again.calls_action and acts_on(again.arguments or {}, last_user_text(messages)):
            retried = self._checked_call(model, messages, sender, again.action, again.arguments or {}, last=last)
            if isinstance(retried[-1], Call):
                return retried
        if not self._words_may_do(model, messages):
            return checked
        if again is None or again.calls_action or again.handoff:  # set on calling: ask for words alone
            again = await self._again(model, messages, sender, text_only=True)
        if again is not None and not again.calls_action and not again.handoff and again.text.strip():
            return [bot_message(again.text)]  # an answer in words: "ta" needs no call
        return checked

    @staticmethod
    def _words_may_do(model: ResponseModel, messages: list[dict]) -> bool:
        """Whether an answer in words may stand in for a call with nothing to copy: after an
        action's result (the model has it to talk about), or when the customer's last message
        gives no value any action takes ("ta", "hiya"). A customer who gave a postcode and asks
        for their balance is asked for the account number instead."""
        if messages[-1]["role"] == "tool":
            return True
        said = [last_user_text(messages)]
        return not grounded_values(model.profile.actions, said, said)

    @staticmethod
    def _nothing_to_copy(model: ResponseModel, messages: list[dict], name: str, checked: list) -> bool:
        """Whether the call was refused as made up, and the conversation offers none of the
        action's grounded arguments a value."""
        refused = checked[0]
        if not (isinstance(refused, dict) and refused.get("reason") == UNGROUNDED):
            return False
        sources = conversation_sources(messages)
        offered = grounded_values(model.profile.actions, sources, customer_messages(messages))
        return not any(action == name for action, _, _ in offered)

    async def _model_handoff(
        self, model: ResponseModel, messages: list[dict], sender: str, reason: str, *, last: bool
    ) -> list[Event | Call]:
        """The model hands over, unless that would come out of the blue (`handoff_unprompted`).
        Then the model is asked again with the handoff ruled out. A call of an action it makes
        goes ahead if it acts on what the customer has just written (a corrected order number):
        a model that meant to hand over, made to call something else, otherwise picks any action
        ("brill, ta" became a return of the order just checked). Else the bot offers a person,
        and a yes gets one."""
        if not handoff_unprompted(messages):
            return [handed_off("model", reason, text=model.profile.handoff_message)]
        log.info("conversation %s: the model's handoff came out of the blue (%.200s): asking again", sender, reason)
        again = None if last else await self._again(model, messages, sender)
        if again is not None and again.calls_action and acts_on(again.arguments or {}, last_user_text(messages)):
            return self._checked_call(model, messages, sender, again.action, again.arguments or {}, last=last)
        return [bot_message(model.profile.handoff_offer, by=OFFER)]

    async def _again(
        self,
        model: ResponseModel,
        messages: list[dict],
        sender: str,
        excluded: tuple[str, ...] = (),
        *,
        text_only: bool = False,
    ):
        """The model's step again, with the handoff and the `excluded` actions ruled out (or, with
        `text_only`, any call), all of it held back for the caller to judge; None when it gives
        nothing usable."""
        generated = None
        decoding = {"text_only": True} if text_only else {"excluded": (HANDOFF_TOOL, *excluded)}
        try:
            async with aclosing(self._generate(model, messages, **decoding)) as items:
                async for item in items:
                    if isinstance(item, Leak):
                        return None
                    if isinstance(item, Finished):
                        generated = item
        except ModelServerUnavailable as e:
            log.warning("conversation %s: no second reply: %s", sender, e)
            return None
        reply = parse_reply(generated.text) if generated else None
        return reply if reply is not None and reply.broken_call is None else None

    def _checked_call(
        self, model: ResponseModel, messages: list[dict], sender: str, name: str, arguments: dict, *, last: bool
    ) -> list[Event | Call]:
        """The model's call, if it may run; else why not (an event) and what the customer is told."""
        if leak := model.leak_guard.find_in(arguments):  # never sent: an action may echo its arguments
            return [
                self._guarded(sender, leak, "tool_call", action=name),
                bot_message(model.leak_guard.refusal, by=GUARD),
            ]
        problems = model.profile.argument_problems(name, arguments)
        if problems or last:
            # Never run: the call doesn't match its declaration, or this message had its share of actions.
            if problems:
                refused = action_rejected(name, arguments, problems)
            else:
                refused = action_failed(name, arguments, "too many actions for one message")
            why = "; ".join(problems) or refused["error"]
            log.warning("conversation %s: not running %s(%s): %s", sender, name, json.dumps(arguments), why)
            return [refused, bot_message(COULD_NOT_DO)]
        invented = ungrounded(model.profile.actions[name], arguments, conversation_sources(messages))
        if invented:  # never sent: the customer is asked for the value instead
            called, made_up = json.dumps(arguments), ", ".join(invented)
            log.warning(
                "conversation %s: not running %s(%s): %s not from the conversation", sender, name, called, made_up
            )
            problems = [f"'{a}' {json.dumps(arguments[a])} appears nowhere in the conversation" for a in invented]
            return [action_rejected(name, arguments, problems, reason=UNGROUNDED), bot_message(asked_for(invented))]
        return [Call(name, arguments)]

    async def _generate(
        self,
        model: ResponseModel,
        messages: list[dict],
        *,
        text_only: bool = False,
        excluded: tuple[str, ...] = (),
    ) -> AsyncIterator[Piece | Status | Finished | Leak]:
        """Streams a bot message; holds text back while it may still turn out to be a tool call,
        which the customer never sees, or grow into a leak. A call of a declared action gives a
        `Status` as soon as its name is written. A leak ends the generation: the `Leak` is the
        last item."""
        visible = VisibleText()
        announced = False  # the status of the action being called was sent
        watch = model.leak_guard.stream()
        grounded = grounded_values(model.profile.actions, conversation_sources(messages), customer_messages(messages))
        stream = model.stream(
            messages,
            self.config.max_new_tokens,
            grounded=grounded,
            text_only=text_only,
            excluded=excluded,
        )
        async with aclosing(stream) as pieces:
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
                elif not announced and (name := visible.calling()) in model.profile.actions:
                    announced = True
                    yield Status(model.profile.actions[name].status, name)

    # -- the leak guard ------------------------------------------------------------------------
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
        if event["type"] not in (BOT, HANDOFF) or event.get("by") == GUARD:
            return [event]
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
