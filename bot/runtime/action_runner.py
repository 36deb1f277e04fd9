"""Calling custom actions on a rasa-sdk action server, with its protocol exactly (rasa-sdk
3.21.1's `POST /webhook`: next_action, sender_id, tracker, domain, version), and turning what
comes back into conversation events.

The model's arguments go to the action as slots (merged over the conversation's slots) and as
entities of the latest message, so existing rasa-sdk code that reads either works unchanged.
What the action returns:
- `slot` events set the conversation's slots (stored, sent with the next call);
- `pause` (rasa-sdk's ConversationPaused) or a FollowupAction of `handoff_to_human` hands the
  conversation to a person;
- responses with text, buttons or an image become bot messages;
- the tool result the model sees next is the responses' custom payload (`json_message`), or
  else the slots the action set, or else its messages.

Any failure (unreachable, timeout, an error status, a malformed answer) becomes an
`action_failed` event, an apology that offers a person, and a log line with the action and status.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import rasa_sdk.events as rasa

from bot.conversations.events import (
    ACTION,
    AGENT,
    BOT,
    SLOT,
    USER,
    Event,
    action_executed,
    action_failed,
    bot_message,
    slot_set,
    slots_reset,
)
from bot.data.profile import BotProfile
from bot.data.schema import HANDOFF_TOOL

log = logging.getLogger("bot.runtime.action_runner")

RASA_SDK_VERSION = "3.21.1"
# The names of the events an action server answers with (rasa-sdk's wire format, made by
# rasa_sdk.events.SlotSet, AllSlotsReset, ConversationPaused and FollowupAction): not ours.
RASA_SLOT, RASA_RESET_SLOTS, RASA_PAUSE, RASA_FOLLOWUP = "slot", "reset_slots", "pause", "followup"
SORRY = "Sorry, I can't look that up right now. Would you like me to pass you to a member of our team?"


@dataclass
class ActionOutcome:
    events: list[Event] = field(default_factory=list)  # to store and show, in order
    action_event: Event | None = None  # the call and its result, for the model's context
    failed: bool = False
    handoff: bool = False


class ActionFailed(Exception):
    def __init__(self, status: str, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def _slot_from_entity(entity: str) -> dict:
    """A Rasa slot of any type, filled from the entity of the same name, that does not steer the dialogue."""
    mapping = {"type": "from_entity", "entity": entity}
    return {"type": "any", "influence_conversation": False, "mappings": [mapping]}


def domain_of(profile: BotProfile) -> dict:
    """A Rasa domain for the declared actions: every argument is a slot filled from the entity
    of the same name."""
    arguments = sorted({a for action in profile.actions.values() for a in action.arguments})
    slots = {a: _slot_from_entity(a) for a in arguments}
    return {
        "version": "3.1",
        "intents": [],
        "entities": arguments,
        "slots": slots,
        "responses": {},
        "actions": sorted(profile.actions),
        "forms": {},
        "session_config": {"session_expiration_time": 60, "carry_over_slots_to_new_session": True},
    }


def rasa_events(events: list[Event]) -> list[dict]:
    """Our stored events in Rasa's tracker event format (what rasa-sdk's Tracker reads)."""
    out = []
    for e in events:
        kind, ts = e["type"], e.get("timestamp")
        if kind == USER:
            parse_data = {"text": e.get("text"), "intent": {}, "entities": []}
            out.append(rasa.UserUttered(e.get("text"), parse_data=parse_data, timestamp=ts, input_channel="rest"))
        elif kind in (BOT, AGENT):
            out.append(rasa.BotUttered(e.get("text"), data={}, metadata={"from": kind}, timestamp=ts))
        elif kind == ACTION:
            out.append(rasa.ActionExecuted(e["name"], timestamp=ts))
        elif kind == SLOT:
            out.append(rasa.SlotSet(e["name"], e.get("value"), timestamp=ts))
    return out


class ActionRunner:
    def __init__(self, session: aiohttp.ClientSession, url: str, *, timeout_s: float, tracker_events: int = 20):
        self.session = session
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.tracker_events = tracker_events

    def request_body(
        self, name: str, arguments: dict, *, sender: str, state, latest: Event, profile: BotProfile
    ) -> dict:
        slots = {a: None for action in profile.actions.values() for a in action.arguments}
        slots.update(state.slots)
        slots.update(arguments)
        entities = [{"entity": k, "value": v, "extractor": "bot"} for k, v in arguments.items()]
        tracker = {
            "sender_id": sender,
            "slots": slots,
            "latest_message": {
                "text": latest.get("text"),
                "intent": {},
                "entities": entities,
                "metadata": latest.get("metadata") or {},
            },
            "events": rasa_events(state.recent[-self.tracker_events :]),
            "paused": False,
            "followup_action": None,
            "active_loop": {},
            "latest_action_name": "action_listen",
            "latest_input_channel": "rest",
        }
        # Always with the domain (rasa-sdk answers 449 to a call without one and no domain_digest).
        return {
            "next_action": name,
            "sender_id": sender,
            "tracker": tracker,
            "domain": domain_of(profile),
            "version": RASA_SDK_VERSION,
        }

    async def _post(self, body: dict) -> tuple[int, Any]:
        try:
            async with self.session.post(self.url, json=body, timeout=self.timeout) as response:
                text = await response.text()
                try:
                    return response.status, json.loads(text) if text else None
                except json.JSONDecodeError:
                    return response.status, text[:200]
        except TimeoutError:
            raise ActionFailed("timeout", f"no answer within {self.timeout.total:g} s") from None
        except aiohttp.ClientError as e:
            raise ActionFailed("unreachable", str(e) or type(e).__name__) from None

    async def call(self, name: str, arguments: dict, **context) -> dict:
        """The action server's answer to one call: {"events", "responses"}; ActionFailed otherwise."""
        body = self.request_body(name, arguments, **context)
        status, answer = await self._post(body)
        if status == 449:  # "send the domain": the body has it; resend once, as Rasa does
            status, answer = await self._post(body)
        if status != 200:
            detail = answer.get("error") if isinstance(answer, dict) else answer
            raise ActionFailed(f"HTTP {status}", str(detail or "no details"))
        is_object = isinstance(answer, dict)
        lists_where_expected = is_object and all(
            isinstance(answer.get(key, []), list) for key in ("events", "responses")
        )
        if not lists_where_expected:
            raise ActionFailed("bad answer", "not {'events': [...], 'responses': [...]}")
        return answer

    async def run(
        self, name: str, arguments: dict, *, sender: str, state, latest: Event, profile: BotProfile
    ) -> ActionOutcome:
        try:
            answer = await self.call(name, arguments, sender=sender, state=state, latest=latest, profile=profile)
        except ActionFailed as e:
            log.warning("action %s failed for conversation %s: %s (%s)", name, sender, e.status, e.detail)
            failed = action_failed(name, arguments, e.detail, status=e.status)
            return ActionOutcome([failed, bot_message(SORRY)], failed=True)
        return outcome_of(name, arguments, answer)


def outcome_of(name: str, arguments: dict, answer: dict) -> ActionOutcome:
    outcome = ActionOutcome()
    slots: dict[str, Any] = {}
    for event in answer.get("events") or []:
        kind = event.get("event") if isinstance(event, dict) else None
        if kind == RASA_SLOT:
            slots[event["name"]] = event.get("value")
            outcome.events.append(slot_set(event["name"], event.get("value"), by=name))
        elif kind == RASA_RESET_SLOTS:
            outcome.events.append(slots_reset(by=name))
        elif kind == RASA_PAUSE or (kind == RASA_FOLLOWUP and event.get("name") == HANDOFF_TOOL):
            outcome.handoff = True
    payloads, texts = [], []
    messages = []
    for response in answer.get("responses") or []:
        if not isinstance(response, dict):
            continue
        if response.get("custom"):
            payloads.append(response["custom"])
        shown = {k: response.get(k) or None for k in ("text", "buttons", "image")}
        if any(shown.values()):
            texts += [shown["text"]] if shown["text"] else []
            messages.append(bot_message(by=name, **shown))
    result = payloads[0] if len(payloads) == 1 else payloads or slots or ({"messages": texts} if texts else {})
    outcome.action_event = action_executed(name, arguments, result)
    outcome.events = [outcome.action_event] + outcome.events + messages
    return outcome


class InProcessActions(ActionRunner):
    """The project's action package run in this process by rasa-sdk's own executor (as
    `python -m rasa_sdk --actions PACKAGE` runs it), with the same request body and the same
    reading of its answer: what the conversation tests use, with no server to start. `stubs`:
    per conversation, actions answered from the test instead (`{"events", "responses"}` as an
    action server answers, or `{"error": text}` for an action that fails)."""

    def __init__(
        self, package: str | None, *, tracker_events: int = 20, stubs: dict[str, dict[str, dict]] | None = None
    ):
        from rasa_sdk.executor import ActionExecutor

        self.package = package
        self.executor = ActionExecutor()
        if package:
            self.executor.register_package(package)
        self.tracker_events = tracker_events
        self.stubs = stubs if stubs is not None else {}

    async def call(self, name: str, arguments: dict, **context) -> dict:
        stub = self.stubs.get(context["sender"], {}).get(name)
        if stub is not None:
            if stub.get("error"):
                raise ActionFailed("stubbed", stub["error"])
            return {"events": list(stub.get("events") or []), "responses": list(stub.get("responses") or [])}
        if name not in self.executor.actions:
            where = (
                f"the action package '{self.package}'" if self.package else "the project (it has no action package)"
            )
            raise ActionFailed("HTTP 404", f"no action '{name}' in {where}: stub it in the test")
        body = self.request_body(name, arguments, **context)
        try:
            result = await self.executor.run(body)
        except Exception as e:  # the action's own fault, as the action server's 500
            raise ActionFailed("HTTP 500", f"{type(e).__name__}: {e}") from None
        return result.model_dump(by_alias=True) if result else {"events": [], "responses": []}
