"""KV caches for the batching engine.

`BatchCache` holds the keys and values of every running row, left-padded so that all rows
write their next token into the same column (the layout transformers uses for a padded batch),
in buffers with spare columns, so a decode step writes in place instead of copying the cache
(transformers' DynamicCache concatenates, copying all of it every step). Row `b`'s tokens are
the columns `starts[b]..width-1`; the columns before are padding that the attention mask hides.
A speculative step writes a row's guesses beside its last token; the columns of guesses that
turn out wrong are hidden (`hide`) until the cache is rebuilt without them (`compact`).

`PromptCache` keeps the KV of prompts already computed (the system prompt, pinned, and each
conversation as it stood after its last reply), within a byte budget, least recently used
evicted first. A new prompt reuses the longest cached token prefix it shares.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

GROW = 64  # spare columns added when a buffer is full or rebuilt


class _Layer(CacheLayerMixin):
    """One layer's keys and values: [rows, kv heads, capacity, head dim], `width` columns used."""

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, width: int):
        super().__init__()
        self.keys, self.values, self.width = keys, values, width
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # always initialised
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.width + new > self.keys.shape[-2]:
            self.keys = _widen(self.keys, self.width, self.width + new + GROW)
            self.values = _widen(self.values, self.width, self.width + new + GROW)
        self.keys[:, :, self.width : self.width + new] = key_states
        self.values[:, :, self.width : self.width + new] = value_states
        self.width += new
        return self.keys[:, :, : self.width], self.values[:, :, : self.width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.width + query_length, 0

    def get_seq_length(self) -> int:
        return self.width

    def get_max_length(self) -> int:
        return -1


def _widen(buffer: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    wider = buffer.new_zeros(*buffer.shape[:2], capacity, buffer.shape[3])
    wider[:, :, :used] = buffer[:, :, :used]
    return wider


class BatchCache(Cache):
    """The running rows' KV, as a transformers `Cache` the model writes into. `hidden`: a row's
    columns that hold no token of it (rejected guesses), [rows, n] (columns from n on: none);
    None while there are none."""

    def __init__(self, layers: list[_Layer], hidden: torch.Tensor | None = None):
        super().__init__(layers=layers)
        self.hidden = hidden

    @property
    def width(self) -> int:
        return self.layers[0].width

    @property
    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    def row(self, b: int, start: int, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row b's first `tokens` tokens from column `start` on, hidden columns skipped, copied
        out (one [1, heads, tokens, dim] pair per layer)."""
        columns = self._columns(b, start, tokens)
        return [
            (layer.keys[b : b + 1].index_select(2, columns), layer.values[b : b + 1].index_select(2, columns))
            for layer in self.layers
        ]

    def _columns(self, b: int, start: int, tokens: int) -> torch.Tensor:
        """The columns of row b's first `tokens` tokens from `start` on (hidden ones skipped)."""
        device = self.layers[0].keys.device
        shown = ~self._hidden(start + tokens + self._hidden_count(b, start))[b, start:]
        return (shown.nonzero().flatten()[:tokens] + start).to(device)

    def _hidden_count(self, b: int, start: int) -> int:
        """How many of row b's columns from `start` on are hidden."""
        return 0 if self.hidden is None else int(self.hidden[b, start:].sum())

    def hidden_columns(self, width: int) -> torch.Tensor | None:
        """[rows, width]: True where a row's column holds no token of it; None when none does."""
        return None if self.hidden is None else self._hidden(width)

    def _hidden(self, width: int) -> torch.Tensor:
        """`hidden` cut or padded to `width` columns (all False where nothing is hidden)."""
        rows, device = self.layers[0].keys.shape[0], self.layers[0].keys.device
        hidden = self.hidden if self.hidden is not None else torch.zeros(rows, 0, dtype=torch.bool, device=device)
        if hidden.shape[1] >= width:
            return hidden[:, :width]
        return torch.cat([hidden, hidden.new_zeros(rows, width - hidden.shape[1])], 1)

    def hide(self, b: int, start: int, stop: int) -> None:
        """Row b's columns start..stop-1 hold no token of it from now on."""
        hidden = self._hidden(max(stop, self.hidden.shape[1] if self.hidden is not None else 0))
        hidden[b, start:stop] = True
        self.hidden = hidden

    def rollback(self, width: int) -> None:
        """Forget the columns from `width` on (guesses no row kept)."""
        for layer in self.layers:
            layer.width = min(layer.width, width)
        if self.hidden is not None:
            self.hidden = self.hidden[:, :width]

    def compact(self, starts: list[int]) -> list[int]:
        """Rebuild without hidden columns, every row right-aligned again; returns the rows' new
        first columns."""
        width = self.width
        counts = [width - start - self._hidden_count(b, start) for b, start in enumerate(starts)]
        new_width = max(counts)
        index = torch.zeros(len(starts), new_width, dtype=torch.long, device=self.layers[0].keys.device)
        for b, (start, count) in enumerate(zip(starts, counts, strict=True)):
            index[b, new_width - count :] = self._columns(b, start, count)
        for layer in self.layers:
            gather = index[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            keys, values = layer.keys.gather(2, gather), layer.values.gather(2, gather)
            layer.keys = _widen(keys, new_width, new_width + GROW)
            layer.values = _widen(values, new_width, new_width + GROW)
            layer.width = new_width
        self.hidden = None
        return [new_width - count for count in counts]

    def keep(self, rows: list[int], trim: int) -> None:
        """Keep only `rows` (in this order) and drop the first `trim` columns (padding for all)."""
        index = torch.tensor(rows, device=self.layers[0].keys.device)
        for layer in self.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:]
            layer.values = layer.values.index_select(0, index)[:, :, trim:]
            layer.width -= trim
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(0, index.to(self.hidden.device))[:, trim:]

    @classmethod
    def stack(cls, parts: list[BatchCache], spare: int = GROW) -> tuple[BatchCache, list[int]]:
        """One cache of all `parts`' rows, right-aligned to the widest; returns the cache and the
        padding columns added in front of each part."""
        width = max(p.width for p in parts)
        shifts = [width - p.width for p in parts]
        layers = []
        for i, first in enumerate(parts[0].layers):
            rows = sum(p.layers[i].keys.shape[0] for p in parts)
            shape = (rows, first.keys.shape[1], width + spare, first.keys.shape[3])
            keys, values = first.keys.new_zeros(shape), first.values.new_zeros(shape)
            at = 0
            for part, shift in zip(parts, shifts, strict=True):
                layer = part.layers[i]
                n = layer.keys.shape[0]
                keys[at : at + n, :, shift:width] = layer.keys[:, :, : layer.width]
                values[at : at + n, :, shift:width] = layer.values[:, :, : layer.width]
                at += n
            layers.append(_Layer(keys, values, width))
        hidden = None
        if any(p.hidden is not None for p in parts):
            blocks = []
            for part, shift in zip(parts, shifts, strict=True):
                own = part._hidden(part.width)
                blocks.append(torch.cat([own.new_zeros(own.shape[0], shift), own], 1))  # after its padding
            hidden = torch.cat(blocks)
        return cls(layers, hidden), shifts

    @classmethod
    def from_prefixes(
        cls,
        prefixes: list[list[tuple[torch.Tensor, torch.Tensor]] | None],
        lengths: list[int],
        spec: KVSpec,
        spare: int,
    ) -> BatchCache:
        """Rows made of the first `lengths[b]` cached columns of `prefixes[b]`, right-aligned,
        with `spare` free columns after them."""
        width = max(lengths)
        shape = (len(prefixes), spec.heads, width + spare, spec.head_dim)
        layers = []
        for i in range(spec.layers):
            keys = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
            values = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
            for b, (prefix, n) in enumerate(zip(prefixes, lengths, strict=True)):
                if n:
                    keys[b, :, width - n : width] = prefix[i][0][0, :, :n]
                    values[b, :, width - n : width] = prefix[i][1][0, :, :n]
            layers.append(_Layer(keys, values, width))
        return cls(layers)


@dataclass(frozen=True)
class KVSpec:
    """The shape of one token's keys and values in a model."""

    layers: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, model) -> KVSpec:
        config = model.config.get_text_config()
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        parameter = next(model.parameters())
        return cls(config.num_hidden_layers, heads, head_dim, parameter.dtype, parameter.device)


def common_prefix(sequences: list[list[int]]) -> list[int]:
    """The tokens all sequences start with (what a pinned prompt-cache entry should hold)."""
    first = sequences[0]
    n = len(first)
    for other in sequences[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], other, strict=False)) if a != b), min(n, len(other)))
    return first[:n]


@dataclass
class CachedPrompt:
    tokens: torch.Tensor  # int64 [n]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, heads, n, dim]
    nbytes: int
    pinned: bool = False
    adapter: int = 0  # the adapter that computed it (bot.engine.adapters): its KV is no other's


class PromptCache:
    """Computed prompts by their tokens, within `limit_bytes`."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.entries: OrderedDict[int, CachedPrompt] = OrderedDict()  # least recently used first
        self.nbytes = 0
        self._next = 0

    @staticmethod
    def _common(a: torch.Tensor, b: torch.Tensor) -> int:
        n = min(len(a), len(b))
        differ = (a[:n] != b[:n]).nonzero()
        return int(differ[0]) if len(differ) else n

    def lookup(self, prompt: list[int], adapter: int = 0) -> tuple[CachedPrompt | None, int]:
        """The entry of `adapter` sharing the longest token prefix with `prompt`, and how many
        tokens of it to reuse (at least the prompt's last token is always computed: its logits
        are needed)."""
        wanted = torch.tensor(prompt)
        best, best_n = None, 0
        for key, entry in self.entries.items():
            if entry.adapter != adapter:
                continue
            n = self._common(entry.tokens, wanted)
            if n > best_n:
                best, best_n, best_key = entry, n, key
        best_n = min(best_n, len(prompt) - 1)
        if best is None or best_n <= 0:
            return None, 0
        self.entries.move_to_end(best_key)
        return best, best_n

    def add(
        self, tokens: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]], *, pinned: bool = False, adapter: int = 0
    ) -> bool:
        """Keep `kv` for `tokens` as `adapter` computed them; entries it extends are dropped (a
        conversation's previous turn), then the least recently used until it fits. False if it
        can't fit at all."""
        nbytes = sum(k.nbytes + v.nbytes for k, v in kv)
        if nbytes > self.limit_bytes:
            return False
        new = torch.tensor(tokens)
        for key, entry in self.entries.items():  # already kept (a prefix pinned again): kept once
            if entry.adapter == adapter and torch.equal(entry.tokens, new):
                entry.pinned = entry.pinned or pinned
                self.entries.move_to_end(key)
                return True
        for key, entry in list(self.entries.items()):
            is_prefix_of_new = len(entry.tokens) <= len(new) and self._common(entry.tokens, new) == len(entry.tokens)
            if not entry.pinned and is_prefix_of_new and entry.adapter == adapter:
                self._drop(key)
        for key, entry in list(self.entries.items()):
            if self.nbytes + nbytes <= self.limit_bytes:
                break
            if not entry.pinned:
                self._drop(key)
        if self.nbytes + nbytes > self.limit_bytes:
            return False
        self._next += 1
        self.entries[self._next] = CachedPrompt(new, kv, nbytes, pinned, adapter)
        self.nbytes += nbytes
        return True

    def keep_adapters(self, adapters: set[int]) -> None:
        """Drop what other adapters computed (an adapter reloaded: its old KV is no one's)."""
        for key, entry in list(self.entries.items()):
            if entry.adapter not in adapters:
                self._drop(key)

    def _drop(self, key: int) -> None:
        self.nbytes -= self.entries.pop(key).nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
