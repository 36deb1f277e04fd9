"""Tool calls that can't come out malformed. Once a reply has opened a tool call, every next token
must keep it a valid call of a declared action: llguidance (the library vLLM uses for structured
output) computes, per row and per step, which tokens may come next under the grammar of
`bot.data.tool_schema`, and the engine masks every other token before it picks one. A reply that
doesn't open a call is never constrained: customers get the text the model writes.

A request may carry the values its conversation offers to grounded arguments
(`bot.data.grounding.grounded_values`): its call then copies one of them. Its grammar is
compiled when the reply opens a call, and kept for the next requests that offer the same values
(a conversation's next steps, mostly).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import llguidance
import llguidance.hf
import torch

from bot.data.grounding import GroundedValues
from bot.data.prompt import TOOL_CALL_OPEN
from bot.data.schema import Action
from bot.data.tool_schema import tool_call_grammar
from bot.engine.protocol import EngineError

log = logging.getLogger("bot.engine")

KEPT_GRAMMARS = 64  # compiled grammars of grounded values kept, least recently used dropped


def _text_starts(tokenizer, vocab_size: int) -> torch.Tensor:
    """Boolean mask of the tokens a text-only reply may start with: all but those whose text
    (after leading whitespace) begins the tool-call tag or starts with it."""
    pieces = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    opening = [
        (lead := p.lstrip()) != "" and (TOOL_CALL_OPEN.startswith(lead) or lead.startswith(TOOL_CALL_OPEN))
        for p in pieces
    ]
    return ~torch.tensor(opening, dtype=torch.bool)


class ToolCallConstraint:
    """The call grammar compiled for one tokenizer (about a second: once per engine)."""

    def __init__(self, tokenizer, actions: dict[str, Action], vocab_size: int):
        self.vocab_size = vocab_size
        self.actions = actions
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.text_starts = _text_starts(tokenizer, vocab_size)  # about half a second: here, not mid-batch
        self.template = self._compile(())
        if self.template.is_error():
            raise EngineError(f"the tool-call grammar does not compile: {self.template.get_error()}")
        self._kept: OrderedDict[tuple[GroundedValues, tuple[str, ...]], llguidance.LLMatcher] = OrderedDict()
        self._bits = torch.arange(32, dtype=torch.int32)
        self.masks, self.mask_seconds = 0, 0.0  # what the constraint has cost so far
        self.compiles, self.compile_seconds = 0, 0.0

    def _compile(self, grounded: GroundedValues, excluded: tuple[str, ...] = ()) -> llguidance.LLMatcher:
        grammar = tool_call_grammar(self.actions, grounded, excluded=excluded)
        return llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)

    def template_for(self, grounded: GroundedValues, excluded: tuple[str, ...] = ()) -> llguidance.LLMatcher:
        """A fresh matcher of the call grammar with `grounded` values and none of the `excluded`
        calls (an action's or the handoff's name), compiled once per values."""
        if not grounded and not excluded:
            return self.template.deep_copy()
        key = (grounded, excluded)
        template = self._kept.get(key)
        if template is None:
            started = time.perf_counter()
            template = self._compile(grounded, excluded)
            self.compiles += 1
            self.compile_seconds += time.perf_counter() - started
            if template.is_error():  # never expected (values are JSON-escaped): constrain as without them
                log.warning("the tool-call grammar with grounded values does not compile: %s", template.get_error())
                template = self.template
            self._kept[key] = template
            while len(self._kept) > KEPT_GRAMMARS:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        return template.deep_copy()

    def follow(
        self,
        *,
        forced: bool = False,
        text_only: bool = False,
        grounded: GroundedValues = (),
        excluded: tuple[str, ...] = (),
    ) -> CallFollower:
        """A watcher for one reply; `forced`: the reply must be a call from its first token;
        `text_only`: it may not open one; `grounded`: the values its grounded arguments may take;
        `excluded`: the calls it may not make (actions' names, the handoff's)."""
        if forced and text_only:
            raise EngineError("a reply can't be both a forced call and text only")
        follower = CallFollower(self, grounded, text_only=text_only, excluded=excluded)
        if forced:
            follower.matcher = self.template_for(grounded, excluded)
        return follower

    def allowed(self, matcher: llguidance.LLMatcher) -> torch.Tensor:
        """Boolean mask over the vocabulary of the tokens `matcher` accepts next."""
        started = time.perf_counter()
        words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
        mask = ((words[:, None] >> self._bits) & 1).flatten()[: self.vocab_size].bool()
        self.masks += 1
        self.mask_seconds += time.perf_counter() - started
        return mask


class CallFollower:
    """One reply's watcher. Free until the reply's text (after leading whitespace) has opened a
    call; from then on it holds a matcher fed with every token of the reply, and `allowed` says
    what may come next. A reply that starts any other way is left free for good."""

    def __init__(
        self,
        constraint: ToolCallConstraint,
        grounded: GroundedValues = (),
        *,
        text_only: bool = False,
        excluded: tuple[str, ...] = (),
    ):
        self.constraint = constraint
        self.grounded = grounded
        self.excluded = excluded
        self.text_only = text_only  # until its first visible character, the reply may not open a call
        self.matcher: llguidance.LLMatcher | None = None
        self.free = False  # decided: not a call (or the matcher gave up), never constrained

    @property
    def active(self) -> bool:
        return self.matcher is not None or (self.text_only and not self.free)

    def observe(self, tokens: list[int], text: str) -> None:
        """The reply so far (token ids and text), after each new token."""
        if self.free:
            return
        if self.text_only:
            self.free = text.strip() != ""  # it has started as text: a tag later on is cut (parse_reply)
            return
        if self.matcher is not None:
            self._check(self.matcher.consume_token(tokens[-1]))
            return
        lead = text.lstrip()
        if lead.startswith(TOOL_CALL_OPEN):
            self.matcher = self.constraint.template_for(self.grounded, self.excluded)
            self._check(self.matcher.consume_tokens(tokens))
        elif lead and not TOOL_CALL_OPEN.startswith(lead):
            self.free = True

    def _check(self, accepted: bool) -> None:
        if not accepted or self.matcher.is_error():
            # Only a token the mask allowed gets here, so this is a fault of the grammar engine:
            # stop constraining; the dialogue treats whatever comes out as a failed call.
            error = self.matcher.get_error().splitlines() if self.matcher else []
            log.warning("tool-call constraint gave up: %s", error[0] if error else "the token was refused")
            self.matcher, self.free = None, True

    def forced(self) -> list[int]:
        """Inside a call, the tokens the grammar forces next (its only way on, as llguidance
        tokenizes it), fed at once by the engine; none outside a call."""
        if self.matcher is None:
            return []
        return self.matcher.compute_ff_tokens()

    def allowed(self) -> torch.Tensor:
        if self.text_only:
            return self.constraint.text_starts
        return self.constraint.allowed(self.matcher)
