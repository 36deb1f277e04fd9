"""Prompt-lookup drafts: the tokens a reply will probably write next, guessed from its own context.

A contact-centre reply copies a lot from what it has already seen: the customer's name and
account number, amounts, plan names and dates from an action's result. So the last few tokens of
a row have often appeared before, and what followed them then is a good guess for what follows
now (prompt-lookup decoding: transformers' `prompt_lookup_num_tokens`, vLLM's `ngram`
speculator). The engine feeds a row's guesses with its last token in one forward pass, keeps the
longest prefix that equals what greedy decoding picks at each position, and so writes several
tokens for the price of one pass, with exactly the tokens it would have written one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_NGRAM = 3  # the longest suffix looked up; shorter ones are tried when it isn't found
MIN_DRAFT, MAX_DRAFT = 1, 8  # how many tokens a row may guess at once
START_DRAFT = 4


class Drafter:
    """One request's context (prompt and reply so far) indexed by its n-grams, and how many
    tokens to guess: `k` grows while the guesses are all accepted and shrinks when none is."""

    def __init__(self, tokens: Sequence[int]):
        self.tokens: list[int] = []
        # (n-gram) -> where the tokens after its latest occurrence start, for every occurrence
        # but the context's own suffix (its continuation is what is being guessed)
        self.after: dict[tuple[int, ...], int] = {}
        self.k = START_DRAFT
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Tokens appended to the context (the prompt at first, then each accepted token)."""
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before `token` get it as continuation
            for n in range(1, MAX_NGRAM + 1):
                if end >= n:
                    self.after[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def draft(self, limit: int | None = None) -> list[int]:
        """Up to `k` (and `limit`) tokens that followed the latest earlier occurrence of the
        context's last n-gram, the longest n first; none when no suffix occurred before."""
        k = self.k if limit is None else min(self.k, limit)
        if k <= 0:
            return []
        tokens = self.tokens
        for n in range(min(MAX_NGRAM, len(tokens)), 0, -1):
            start = self.after.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start : start + k]
        return []

    def accepted(self, guessed: int, kept: int) -> None:
        """`kept` of the `guessed` tokens were right: guess more next time when all were, fewer
        when none was."""
        if not guessed:
            return
        if kept == guessed:
            self.k = min(MAX_DRAFT, self.k + 2)
        elif kept == 0:
            self.k = max(MIN_DRAFT, self.k - 1)
