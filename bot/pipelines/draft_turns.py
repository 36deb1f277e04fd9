"""A stored conversation's events (bot/conversations/store.py) as the turns of a dialogue, in the
training format: what the customer wrote, what the bot answered, the actions it ran with their
arguments and results, a handoff. Where a person took the conversation over, the agent's
messages become the bot's turns (to learn how a person solved it), marked for review.

Kept out: slots, ratings, the leak guard's records, failed or refused calls (the apology after a
failure stays, as context the model is not trained to say). The turns always follow the
validator's order rules: consecutive messages of one side are merged, a handoff is last, an
unanswered last message of the customer is left out."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.conversations.events import (
    ACTION,
    ACTION_PROBLEMS,
    ACTION_REJECTED,
    AGENT,
    BOT,
    GUARD,
    HANDOFF,
    MODEL_UNAVAILABLE,
    RESUME,
    UNGROUNDED,
    USER,
    Event,
)
from bot.conversations.search import latest_ratings

APOLOGY_AFTER = (*ACTION_PROBLEMS, MODEL_UNAVAILABLE)


@dataclass
class DraftTurn:
    turn: dict  # {"user": text} | {"bot": text, "train"?: False} | {"action", "args", "result"} | {"handoff": reason}
    notes: list[str] = field(default_factory=list)  # why a person should look at it

    @property
    def kind(self) -> str:
        return next(k for k in ("user", "bot", "action", "handoff") if k in self.turn)


@dataclass
class ConversationTurns:
    turns: list[DraftTurn]
    handed_off: bool  # a person was asked for or took over
    by_agent: bool  # some of the bot's turns are an agent's messages
    left_out: list[str] = field(default_factory=list)  # what was dropped, said in the draft's header


class _Builder:
    def __init__(self, events: list[Event]):
        self.turns: list[DraftTurn] = []
        self.down = {seq for seq, rating in latest_ratings(events).items() if rating.get("rating") == "down"}
        self.handoff: DraftTurn | None = None  # a handoff waiting to be the last turn
        self.waiting: list[Event] = []  # what the customer wrote after it, until a person answers
        self.failure: str | None = None  # the failure the next bot message apologises for
        self.action_messages: list[str] = []  # what an action showed the customer itself
        self.handed_off = self.by_agent = False
        self.left_out: list[str] = []

    def _last(self, kind: str) -> DraftTurn | None:
        return self.turns[-1] if self.turns and self.turns[-1].kind == kind else None

    def _bot(self, text: str, note: str | None = None, *, train: bool = True) -> None:
        if not text:
            return
        if not any(t.kind == "user" for t in self.turns):
            return  # the dialogue starts with the customer
        if (last := self._last("bot")) is not None:  # one bot step per user turn or action result
            last.turn["bot"] = f"{last.turn['bot']}\n\n{text}"
            if not train:
                last.turn["train"] = False
            last.notes += [note] if note else []
            return
        turn = {"bot": text} if train else {"bot": text, "train": False}
        self.turns.append(DraftTurn(turn, [note] if note else []))

    def _close_action(self, *, drop: bool = True) -> None:
        """An action's result must be followed by a bot message: what the action showed, if the
        model said nothing; with nothing at all (the server stopped there), the actions go."""
        if self._last("action") is not None and self.action_messages:
            self._bot(
                "\n".join(self.action_messages),
                "the action's own message, shown to the customer: the model never wrote it",
            )
        self.action_messages = []
        if drop and self._last("action") is not None:
            while self._last("action") is not None:
                self.turns.pop()
            self.left_out.append("an action whose result the bot never answered")

    def user(self, event: Event) -> None:
        if self.handoff is not None:
            self.waiting.append(event)
            return
        self._close_action()
        text = event.get("text") or ""
        if (last := self._last("user")) is not None:
            last.turn["user"] = f"{last.turn['user']}\n{text}"
        elif text:
            self.turns.append(DraftTurn({"user": text}))

    def bot(self, event: Event) -> None:
        text, by = event.get("text") or "", event.get("by")
        note = "the customer rated this reply down" if event.get("seq") in self.down else None
        if by not in (None, GUARD, MODEL_UNAVAILABLE) and self.failure is None:
            self.action_messages.append(text)  # an action's own message: the model's reply (if any) comes next
            return
        if self.failure is not None or by == MODEL_UNAVAILABLE:
            failure = self.failure or "the model server gave no reply"
            self.failure = None
            self.action_messages = []
            self._bot(
                text,
                f"{failure}: this apology is context only (train: false); write the answer a person would give, "
                "or leave it",
                train=False,
            )
            return
        self.action_messages = []
        self._bot(text, note)

    def agent(self, event: Event) -> None:
        self.by_agent = self.handed_off = True
        self._answered()  # a person answered: no handoff, their message is the bot's turn
        self._close_action(drop=False)
        who = f"agent {event['agent']}" if event.get("agent") else "an agent"
        self._bot(
            event.get("text") or "", f"written by {who} after the handoff: check it says what the bot should say"
        )

    def action(self, event: Event) -> None:
        self.action_messages = []
        if self._last("user") is None and self._last("action") is None:
            return  # an action must answer the customer or follow another action
        self.turns.append(
            DraftTurn({"action": event["name"], "args": event.get("arguments") or {}, "result": event.get("result")})
        )

    def failed(self, event: Event) -> None:
        if event["type"] == MODEL_UNAVAILABLE:
            self.failure = "the model server gave no reply"
        elif event["type"] == ACTION_REJECTED and event.get("reason") == UNGROUNDED:
            self.failure = None  # the bot asked the customer for the value: a good reply to learn
        else:
            detail = event.get("status") or event.get("error") or "refused"
            self.failure = f"the call of {event.get('name', 'an action')} failed here ({detail})"

    def handoff_event(self, event: Event) -> None:
        self.handed_off = True
        if event.get("by") == "agent":
            return  # an agent took over: their messages follow
        self._close_action(drop=False)
        if self.turns and self.turns[-1].kind in ("user", "action"):
            self.handoff = DraftTurn({"handoff": event.get("reason") or ""})

    def _answered(self) -> None:
        self.handoff, waiting, self.waiting = None, self.waiting, []
        for event in waiting:
            self.user(event)

    def resume(self, event: Event) -> None:
        self._answered()  # given back to the bot: it answers next

    def context(self) -> ConversationTurns:
        """The turns so far as they stand, the last customer message or action unanswered: what
        the bot's next step answers."""
        return ConversationTurns(self.turns, self.handed_off, self.by_agent, self.left_out)

    def finish(self) -> ConversationTurns:
        self._close_action(drop=self.handoff is None)
        if self.handoff is not None:
            if self.waiting:
                self.left_out.append("the customer's messages after the handoff, which nobody answered")
            self.turns.append(self.handoff)
            return ConversationTurns(self.turns, self.handed_off, self.by_agent, self.left_out)
        while self.turns and self.turns[-1].kind == "user":
            self.turns.pop()
            self.left_out.append("the customer's last message, which had no answer")
        return ConversationTurns(self.turns, self.handed_off, self.by_agent, self.left_out)


def conversation_turns(events: list[Event], *, open_end: bool = False) -> ConversationTurns:
    """The dialogue turns of a stored conversation's events (oldest first). `open_end`: the
    events are what came before a bot step, whose context they are: the last customer message
    or action stays, unanswered."""
    builder = _Builder(events)
    steps = {
        USER: builder.user,
        BOT: builder.bot,
        AGENT: builder.agent,
        ACTION: builder.action,
        HANDOFF: builder.handoff_event,
        RESUME: builder.resume,
    }
    for event in events:
        kind = event.get("type")
        if kind in steps:
            steps[kind](event)
        elif kind in APOLOGY_AFTER:
            builder.failed(event)
    return builder.context() if open_end else builder.finish()
