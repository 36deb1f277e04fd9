"""Tool calls that can't come out malformed. Once a reply has opened a tool call, every next token
must keep it a valid call of a declared action: llguidance (the library vLLM uses for structured
output) computes, per row and per step, which tokens may come next under the grammar of
`bot.data.tool_schema`, and the engine masks every other token before it picks one. A reply that
doesn't open a call is never constrained: customers get the text the model writes.
"""

from __future__ import annotations

import logging
import time

import llguidance
import llguidance.hf
import torch

from bot.data.prompt import TOOL_CALL_OPEN
from bot.data.schema import Action
from bot.data.tool_schema import tool_call_grammar
from bot.engine.protocol import EngineError

log = logging.getLogger("bot.engine")


class ToolCallConstraint:
    """The call grammar compiled for one tokenizer (about a second: once per engine)."""

    def __init__(self, tokenizer, actions: dict[str, Action], vocab_size: int):
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.template = llguidance.LLMatcher(self.tokenizer, tool_call_grammar(actions), log_level=0)
        if self.template.is_error():
            raise EngineError(f"the tool-call grammar does not compile: {self.template.get_error()}")
        self._bits = torch.arange(32, dtype=torch.int32)
        self.masks, self.mask_seconds = 0, 0.0  # what the constraint has cost so far

    def follow(self, *, forced: bool = False) -> CallFollower:
        """A watcher for one reply; `forced`: the reply must be a call from its first token."""
        follower = CallFollower(self)
        if forced:
            follower.matcher = self.template.deep_copy()
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

    def __init__(self, constraint: ToolCallConstraint):
        self.constraint = constraint
        self.matcher: llguidance.LLMatcher | None = None
        self.free = False  # decided: not a call (or the matcher gave up), never constrained

    @property
    def active(self) -> bool:
        return self.matcher is not None

    def observe(self, tokens: list[int], text: str) -> None:
        """The reply so far (token ids and text), after each new token."""
        if self.free:
            return
        if self.matcher is not None:
            self._check(self.matcher.consume_token(tokens[-1]))
            return
        lead = text.lstrip()
        if lead.startswith(TOOL_CALL_OPEN):
            self.matcher = self.constraint.template.deep_copy()
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

    def allowed(self) -> torch.Tensor:
        return self.constraint.allowed(self.matcher)
