"""Generated token ids -> text pieces as they arrive, never splitting a character: vLLM's
incremental detokenization (a short window of tokens is decoded again each step, so a step costs
the same however long the reply is)."""

from __future__ import annotations


class IncrementalText:
    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_offset = 0  # window start: decoding from here gives stable text
        self._read_offset = 0  # tokens up to here are already sent as text
        self.sent = ""  # every piece `add` has returned, joined

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append a token; return the text it completes ('' while a character is unfinished)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix_offset : self._read_offset])
        now = self._decode(self.ids[self._prefix_offset :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            piece = now[len(before) :]
            self.sent += piece
            return piece
        return ""

    @property
    def text(self) -> str:
        return self._decode(self.ids)
