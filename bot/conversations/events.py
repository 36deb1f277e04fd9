"""The events a conversation is made of: their type names and one constructor per type.

A conversation is stored as an append-only list of events (bot/conversations/store.py). Every event is a
JSON object with a `type` (one of the names below), a `timestamp` (seconds since the epoch) and
the fields its constructor documents; the store adds `seq`, which grows within a conversation.
Fields whose value is None are left out. Nothing else in the code spells an event type.

Each type is listed with who writes it and what reads it, in the manner of rasa-sdk's
`events.py` (whose wire events, `{"event": "user", ...}`, are what an action server receives:
`bot.runtime.action_runner.rasa_events` translates).
"""

from __future__ import annotations

import time
from typing import Any, Literal

Event = dict[str, Any]

USER = "user"
BOT = "bot"
AGENT = "agent"
ACTION = "action"
ACTION_FAILED = "action_failed"
ACTION_REJECTED = "action_rejected"
SLOT = "slot"
RESET_SLOTS = "reset_slots"
HANDOFF = "handoff"
RESUME = "resume"
RATING = "rating"
GUARDED = "guarded"
MODEL_UNAVAILABLE = "model_unavailable"
INTERRUPTED = "interrupted"

# The types that change a conversation's state (what bot.conversations.state.fold looks at): the
# store keeps them at hand so that answering never reads the whole conversation.
STATE_EVENTS = (SLOT, RESET_SLOTS, HANDOFF, RESUME)
# The types a customer sees in the widget's history and live feed.
VISIBLE = (USER, BOT, AGENT, HANDOFF, RESUME, INTERRUPTED)
# The messages a conversation's text is made of (summaries, search).
MESSAGES = (USER, BOT, AGENT)
# What a failed or refused action leaves, before the apology.
ACTION_PROBLEMS = (ACTION_FAILED, ACTION_REJECTED)

GUARD = "leak_guard"  # `by` of the refusal that stands in for what the leak guard stopped
OFFER = "handoff_offer"  # `by` of the question that offers a person where the model would have handed over unasked
UNGROUNDED = "ungrounded"  # the reason of an action_rejected event whose values the customer never gave


def new_event(type_: str, **fields: Any) -> Event:
    return {"type": type_, "timestamp": time.time(), **{k: v for k, v in fields.items() if v is not None}}


def user_message(text: str, metadata: dict | None = None) -> Event:
    """A customer's message. `metadata`: what the channel sent with it (empty is left out)."""
    return new_event(USER, text=text, metadata=metadata or None)


def bot_message(
    text: str | None, by: str | None = None, buttons: list | None = None, image: str | None = None
) -> Event:
    """A message shown to the customer as the bot's. `by`: what wrote it when not the model: an
    action's name (its `buttons` and `image` come with it), the leak guard (GUARD), the reply
    policy's offer of a person (OFFER) or MODEL_UNAVAILABLE (the apology standing in for a reply
    the model server could not give)."""
    return new_event(BOT, text=text, by=by, buttons=buttons, image=image)


def agent_message(text: str, name: str | None = None) -> Event:
    """A human agent's message to the customer; `agent`: the agent's name, shown to the customer."""
    return new_event(AGENT, text=text, agent=name)


def action_executed(name: str, arguments: dict, result: Any) -> Event:
    """An action the action server ran: its `name`, the `arguments` the model gave, its `result`."""
    return new_event(ACTION, name=name, arguments=arguments, result=result)


def action_failed(name: str, arguments: dict, error: str, status: int | None = None) -> Event:
    """An action that failed (the action server's `status` and `error`), or a tool call that came
    out malformed; the customer gets an apology and the offer of a person."""
    return new_event(ACTION_FAILED, name=name, arguments=arguments, status=status, error=error)


def action_rejected(name: str, arguments: dict, problems: list, reason: str | None = None) -> Event:
    """A call refused before it ran: arguments that don't match the declaration (`problems`), or
    values the customer never gave (`reason` "ungrounded")."""
    return new_event(ACTION_REJECTED, name=name, arguments=arguments, problems=problems, reason=reason)


def slot_set(name: str, value: Any, by: str | None = None) -> Event:
    """A slot set to `value` (None clears it), `by` the action that set it."""
    return new_event(SLOT, name=name, value=value, by=by)


def slots_reset(by: str | None = None) -> Event:
    """Every slot cleared, `by` the action that asked."""
    return new_event(RESET_SLOTS, by=by)


def handed_off(by: str, reason: str, text: str | None = None, agent: str | None = None) -> Event:
    """The conversation goes to a person until RESUME. `by`: rule (the customer asked), model,
    action or agent (who took it over, with the `agent`'s name); `text`: what the customer is told."""
    return new_event(HANDOFF, by=by, reason=reason, text=text, agent=agent)


def resumed() -> Event:
    """An agent gave the conversation back to the bot."""
    return new_event(RESUME)


def rated(rated_seq: int, value: Literal["up", "down"], comment: str | None = None) -> Event:
    """The customer's vote on the bot message with seq `rated_seq`; the latest one for a message counts."""
    return new_event(RATING, rated_seq=rated_seq, rating=value, comment=comment)


def leak_guarded(kind: str, where: str, encoding: str | None = None, **detail: Any) -> Event:
    """The leak guard stopped text that would have given away the system prompt or the secret:
    which `kind` of leak, `where` (stream, message, handoff, tool call...), in what `encoding`;
    never the text itself."""
    return new_event(GUARDED, kind=kind, encoding=encoding, where=where, **detail)


def model_unavailable(error: str) -> Event:
    """The model server could not give a reply (down, too slow, an error, a broken stream)."""
    return new_event(MODEL_UNAVAILABLE, error=error)


def interrupted(of: int) -> Event:
    """The server stopped (a crash, a restart) before answering the customer message with seq `of`;
    the widget offers to try again."""
    return new_event(INTERRUPTED, of=of)
