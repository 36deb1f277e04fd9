"""Conversations -> model tokens, with the loss mask. Used for training and serving alike.

The base model's own chat template renders the text. SmolLM2's template has no
`{% generation %}` tag, so the mask is built turn by turn (as axolotl does): render the
conversation up to a bot turn with the generation prompt, render it again with the turn, and
train on the tokens in between up to and including the end-of-turn token. Every prefix must be
a token prefix of the whole conversation, or we stop rather than train on a shifted mask.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.data.prompt import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from bot.data.schema import HANDOFF_TOOL
from bot.errors import RenderCancelled, RenderError

IGNORE_INDEX = -100  # a label that torch's cross-entropy ignores: the token is not trained


@dataclass(frozen=True)
class Example:
    """One training sequence. `labels[i]` is the target for position i (the shift to
    next-token prediction happens inside the model's loss, not here)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _neutralize(text: str, special_tokens: list[str]) -> str:
    """Keep control tokens typed by a user (`<|im_end|>`...) from becoming real control tokens."""
    for token in special_tokens:
        if token in text:
            text = text.replace(token, token[0] + "\u200b" + token[1:])
    return text


def tool_call_text(name: str, arguments: dict) -> str:
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + TOOL_CALL_CLOSE


def template_messages(messages: list[dict[str, Any]], tokenizer) -> list[dict[str, str]]:
    """OpenAI-format messages -> plain role/content messages any chat template can render:
    tool calls become `<tool_call>{...}</tool_call>` text, tool results a `tool` message."""
    special = [t for t in tokenizer.all_special_tokens if len(t) > 1]
    result = []
    for m in messages:
        content = m.get("content") or ""
        calls = m.get("tool_calls") or []
        for call in calls:
            function = call["function"]
            content += tool_call_text(function["name"], json.loads(function["arguments"]))
        result.append({"role": m["role"], "content": _neutralize(content, special)})
    return result


@dataclass(frozen=True)
class BotStep:
    """What the model said: a message, an action call, or a handoff (a call of HANDOFF_TOOL)."""

    text: str
    action: str | None = None
    arguments: dict | None = None
    broken_call: str | None = None  # the reply opened a tool call that isn't one: the name it gave, or ''

    @property
    def handoff(self) -> bool:
        return self.action == HANDOFF_TOOL

    @property
    def calls_action(self) -> bool:
        return self.action is not None and not self.handoff


def handoff_step(reason: str) -> BotStep:
    """The step of handing off, as the model would write it."""
    return BotStep(tool_call_text(HANDOFF_TOOL, {"reason": reason}), HANDOFF_TOOL, {"reason": reason})


def parse_reply(text: str) -> BotStep:
    """The inverse of `tool_call_text`: a reply that is exactly one well-formed tool call is a
    call. A reply that opens a call and doesn't finish it well is a broken call (never run,
    never shown). Text is text, up to any tool-call markup in it: markup never reaches a customer."""
    body = text.strip()
    at = body.find(TOOL_CALL_OPEN)
    if at > 0:
        return BotStep(body[:at].rstrip())
    if at < 0:
        return BotStep(text)
    if body.endswith(TOOL_CALL_CLOSE):
        try:
            call = json.loads(body[len(TOOL_CALL_OPEN) : -len(TOOL_CALL_CLOSE)])
        except json.JSONDecodeError:
            call = None
        well_formed = (
            isinstance(call, dict)
            and isinstance(call.get("name"), str)
            and isinstance(call.get("arguments", {}), dict)
        )
        if well_formed:
            return BotStep(text, call["name"], call.get("arguments", {}))
    named = re.search(r'"name"\s*:\s*"([^"]*)"', body)
    return BotStep(body, broken_call=named.group(1) if named else "")


def message_step(message: dict[str, Any]) -> BotStep:
    """The BotStep an OpenAI-format assistant message stands for."""
    calls = message.get("tool_calls") or []
    if calls:
        function = calls[0]["function"]
        arguments = json.loads(function["arguments"])
        return BotStep(tool_call_text(function["name"], arguments), function["name"], arguments)
    return BotStep(message.get("content") or "")


def _ids(tokenizer, messages: list[dict], *, generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    # The template writes every special token itself: adding them again would double the BOS.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """Tokens the model continues from to write the next bot turn (serving, evaluation)."""
    return _ids(tokenizer, template_messages(messages, tokenizer), generation_prompt=True)


WHOLE_FIRST_CHARS_PER_TOKEN = 4  # a conversation with fewer characters than this times the budget is tried whole first


def fitted_prompt_ids(
    tokenizer, messages: list[dict[str, Any]], budget: int, *, cancelled: Callable[[], bool] | None = None
) -> list[int]:
    """`prompt_ids` of the system prompt and as much recent history as fits in `budget` tokens:
    the oldest exchanges go first, whole, so that no turn is cut in half. The latest exchange
    always stays; RenderError if even it doesn't fit.

    Linear in the conversation: a short one (fewer characters than 4 per token of the budget)
    is first rendered whole, and kept if it fits. Otherwise it walks back from the newest
    exchange counting each one's tokens once, stops at the first that doesn't fit, and renders
    the chosen window once. Each exchange is counted as the template writes it after the
    system prompt; with a template whose messages each start with a special token (ChatML, as
    SmolLM2's) the counts add up exactly, and the window's render confirms it. Where they don't
    add up, the window is settled by rendering one exchange more or less at a time: work
    bounded by the budget, not by the history.
    `cancelled` is asked between exchanges: RenderCancelled once it says so."""
    head, exchanges = _exchanges(messages)
    if not exchanges:
        raise RenderError(
            f"the latest message doesn't fit in the model's context ({budget:,} tokens left for the prompt)"
        )
    plain_head = template_messages(head, tokenizer)
    plain: dict[int, list[dict[str, str]]] = {}  # exchange index -> its template messages, made when first needed

    def plain_of(k: int) -> list[dict[str, str]]:
        if k not in plain:
            plain[k] = template_messages(exchanges[k], tokenizer)
        return plain[k]

    def rendered(start: int) -> list[int]:
        kept = [m for k in range(start, len(exchanges)) for m in plain_of(k)]
        return _ids(tokenizer, plain_head + kept, generation_prompt=True)

    def check() -> None:
        if cancelled is not None and cancelled():
            raise RenderCancelled("the prompt was no longer wanted")

    if sum(len(m.get("content") or "") for m in messages) <= WHOLE_FIRST_CHARS_PER_TOKEN * budget:
        ids = rendered(0)  # most conversations are short and fit whole: one render, bounded by the budget
        if len(ids) <= budget:
            return ids
    last = len(exchanges) - 1
    ids = rendered(last)  # the system prompt, the latest exchange and the generation prompt, exactly
    if len(ids) > budget:
        raise RenderError(
            f"the latest message doesn't fit in the model's context ({budget:,} tokens left for the prompt)"
        )
    anchor = plain_head or [{"role": "system", "content": ""}]
    anchor_text = tokenizer.apply_chat_template(anchor, tokenize=False)
    longest = _longest_token(tokenizer)
    total, start, counted_out = len(ids), last, False
    while start > 0:
        check()
        text = tokenizer.apply_chat_template(anchor + plain_of(start - 1), tokenize=False)
        text = text[len(anchor_text) :] if text.startswith(anchor_text) else text
        if longest and len(text) > (budget - total) * longest:
            break  # more characters than the tokens left could hold: it can't fit, no need to count
        cost = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if total + cost > budget:
            counted_out = True
            break
        total, start = total + cost, start - 1
    if start < last:
        ids = rendered(start)  # the one render of the window; its length confirms the counts
    elif not counted_out:
        return ids  # only the latest exchange: the one before can't fit, or there is none
    if len(ids) != total or start == last:  # counts not confirmed: settle the window by rendering
        while len(ids) > budget:
            check()
            start += 1
            ids = rendered(start)
        while start > 0:
            check()
            wider = rendered(start - 1)
            if len(wider) > budget:
                break
            start, ids = start - 1, wider
    return ids


_LONGEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _longest_token(tokenizer) -> int:
    """The most characters one token stands for, for tokenizers that never drop text (no
    normalizer): a text longer than n times this is more than n tokens. 0 where unknown."""
    if tokenizer not in _LONGEST:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or backend.normalizer is not None:
            _LONGEST[tokenizer] = 0
        else:
            _LONGEST[tokenizer] = max((len(piece) for piece in tokenizer.get_vocab()), default=0)
    return _LONGEST[tokenizer]


def render(tokenizer, messages: list[dict[str, Any]]) -> Example:
    """One conversation -> input ids and labels: loss on trained bot turns (assistant messages
    without `weight: 0`) and the end-of-turn token closing each, nothing else."""
    plain = template_messages(messages, tokenizer)
    input_ids = _ids(tokenizer, plain)
    labels = [IGNORE_INDEX] * len(input_ids)
    eos = tokenizer.eos_token_id
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        start = len(_ids(tokenizer, plain[:i], generation_prompt=True))
        upto = _ids(tokenizer, plain[: i + 1])
        if input_ids[:start] != upto[:start] or input_ids[: len(upto)] != upto:
            raise RenderError(
                f"message {i}: the chat template does not render conversation prefixes as token prefixes"
            )
        turn = upto[start:]
        if eos not in turn:
            raise RenderError(
                f"message {i}: the chat template does not close the bot turn with {tokenizer.eos_token!r}"
            )
        stop = start + len(turn) - turn[::-1].index(eos)  # through the last end-of-turn token
        labels[start:stop] = input_ids[start:stop]
    return Example(input_ids, labels)


def _exchanges(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """(system messages, exchanges): each exchange starts at a user message."""
    head = [m for m in messages[:1] if m["role"] == "system"]
    exchanges: list[list[dict]] = []
    for m in messages[len(head) :]:
        if m["role"] == "user" or not exchanges:
            exchanges.append([])
        exchanges[-1].append(m)
    return head, exchanges


def render_within(
    tokenizer, messages: list[dict[str, Any]], max_length: int, name: str = "conversation"
) -> list[Example]:
    """`render`, split at user turns into several examples when the conversation is longer than
    `max_length` tokens; each piece keeps the system prompt. Never cuts silently: an exchange
    that can't fit on its own raises RenderError."""
    whole = render(tokenizer, messages)
    if len(whole) <= max_length:
        return [whole]
    head, exchanges = _exchanges(messages)

    def flat(parts: list[list[dict]]) -> list[dict]:
        return head + [m for part in parts for m in part]

    examples: list[Example] = []
    window: list[list[dict]] = []
    for k, exchange in enumerate(exchanges):
        if window and len(render(tokenizer, flat(window + [exchange]))) <= max_length:
            window.append(exchange)
            continue
        if window:
            examples.append(render(tokenizer, flat(window)))
        single = render(tokenizer, flat([exchange]))
        if len(single) > max_length:
            raise RenderError(
                f"{name}: the exchange starting at user turn {k + 1} is {len(single):,} tokens "
                f"with the system prompt, more than max_length {max_length:,}: shorten it or raise model.max_length"
            )
        window = [exchange]
    examples.append(render(tokenizer, flat(window)))
    return [e for e in examples if e.trained_tokens]
