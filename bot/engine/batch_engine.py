"""The batching engine: one decode loop, in one thread, advances every active request with one
forward pass per step (continuous batching, as in nanochat's engine.py and vLLM).

Each step: requests that are waiting and fit (at most `max_batch` rows) are prefilled together,
their prompts taken from the prompt cache as far as it has them, and join the batch; then one
decode step gives every row its next token. A row that finishes or is cancelled leaves after the
step, and the others go on with exactly the tokens they would have had alone: each row only ever
attends to its own columns of the cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from bot.engine.adapters import BASE, AdapterBank
from bot.engine.constraint import ToolCallConstraint
from bot.engine.kv import BatchCache, KVSpec, PromptCache
from bot.engine.protocol import CANCELLED, LENGTH, STOP, EngineError, EngineStats
from bot.engine.requests import Request, ThreadedEngine, pick_tokens

log = logging.getLogger("bot.engine")


@dataclass
class _Row:
    request: Request
    start: int  # first column of this row in the batch cache
    last: int = 0  # the token to feed next


class BatchingEngine(ThreadedEngine):
    name = "batching"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int,
        max_batch: int = 16,
        max_queue: int = 256,
        kv_cache_mb: float = 1024,
        prefill_tokens: int = 1024,
        pinned_prefix: list[int] | None = None,
        ignore_eos: bool = False,
        constraint: ToolCallConstraint | None = None,
        adapters: AdapterBank | None = None,
    ):
        super().__init__(
            model,
            tokenizer,
            max_length=max_length,
            max_queue=max_queue,
            ignore_eos=ignore_eos,
            constraint=constraint,
            adapters=adapters,
        )
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        self.spec = KVSpec.of(model)
        self.max_batch, self.prefill_tokens = max_batch, prefill_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.prompts = PromptCache(int(kv_cache_mb * 2**20))
        self.hits = self.misses = 0
        self.rows: list[_Row] = []  # the engine thread's alone
        self.cache: BatchCache | None = None
        self.pinned_prefix = pinned_prefix
        self.thread.start()

    async def close(self) -> None:
        await super().close()
        self.prompts.clear()
        if self.spec.device.type == "cuda":
            torch.cuda.empty_cache()

    def stats(self) -> EngineStats:
        cache = self.cache
        return EngineStats(
            queued=len(self.waiting),
            running=len(self.rows),
            kv_cache_bytes=(cache.nbytes if cache else 0) + self.prompts.nbytes,
            prompt_cache_hits=self.hits,
            prompt_cache_misses=self.misses,
            generated_tokens=self.generated_tokens,
        )

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        if self.pinned_prefix:
            self._pin(self.pinned_prefix)
        while True:
            with self.wake:
                while not self.closed and not self.waiting and not self.rows and not self.jobs:
                    self.wake.wait()
                if self.closed:
                    return
            self._run_jobs()
            self._step()

    def _step(self) -> None:
        if len(self.rows) < self.max_batch and self.waiting:
            self._admit()
        if self.rows:
            try:
                self._decode()
            except Exception as e:  # a fault of the whole step (out of memory...): its rows fail, the loop goes on
                log.exception("decode step failed for %d requests", len(self.rows))
                for row in self._release():
                    row.fail(EngineError(f"generation failed: {type(e).__name__}"))

    def _running(self) -> list[Request]:
        return [row.request for row in self.rows]

    def _forget_adapters(self, kept: set[int]) -> None:
        self.prompts.keep_adapters(kept)

    def _release(self) -> list[Request]:
        running = [row.request for row in self.rows]
        self.rows, self.cache = [], None
        return running

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: BatchCache, requests=()
    ) -> list[int]:
        """The next token of each row (greedy, or sampled for a request with a temperature); `cache`
        grows by ids' width. `requests` are the rows' requests in batch order, for the tool-call
        constraint, sampling and each row's adapter (none: the base weights for every row)."""
        if self.adapters and requests:  # without requests (a pinned prefix), the caller has routed
            self.adapters.route([r.adapter for r in requests])
        out = self.decoder(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True)
        # The output layer on each row's last position alone, as one 2-D matmul: the model's own
        # `logits_to_keep` slices a 3-D tensor, and on the CPU that matmul copies the whole
        # output layer once per row (1.2 s instead of 0.1 s to prefill 14 rows here).
        logits = self.head(out.last_hidden_state[:, -1]).float()
        if self.ignore_eos:
            logits[:, list(self.stop_ids)] = float("-inf")
        for b, request in enumerate(requests):
            calls = request.calls
            if calls and calls.active:  # inside a tool call: only tokens that keep it valid
                logits[b].masked_fill_(~calls.allowed().to(logits.device), float("-inf"))
        return pick_tokens(logits, requests).tolist()

    def _mask(self, starts: torch.Tensor, first_query: int, queries: int) -> torch.Tensor:
        """Additive mask [rows, 1, queries, keys]: query column q sees key column k when the key
        is its row's (k >= start) and not in its future (k <= q). A finite minimum, not -inf, so a
        padding query that sees nothing gives finite values, never NaN."""
        keys = torch.arange(first_query + queries, device=starts.device)
        query_cols = torch.arange(first_query, first_query + queries, device=starts.device)
        visible = (keys[None, None, :] >= starts[:, None, None]) & (keys[None, None, :] <= query_cols[None, :, None])
        mask = torch.zeros(visible.shape, dtype=self.spec.dtype, device=starts.device)
        mask.masked_fill_(~visible, torch.finfo(self.spec.dtype).min)
        return mask[:, None]

    # -- prefill ---------------------------------------------------------------------------
    def _take_waiting(self) -> list[tuple[Request, object, int]]:
        """Waiting requests for the free rows, oldest first, within the prefill token budget."""
        chosen: list[tuple[Request, object, int]] = []
        widest = 0
        with self.wake:
            while self.waiting and len(self.rows) + len(chosen) < self.max_batch:
                request = self.waiting[0]
                if request.cancelled:
                    self.waiting.popleft().finish(CANCELLED)
                    continue
                entry, reused = self.prompts.lookup(request.prompt, request.adapter)
                width = max(widest, len(request.prompt) - reused)
                if chosen and width * (len(chosen) + 1) > self.prefill_tokens:
                    break
                chosen.append((self.waiting.popleft(), entry, reused))
                widest = width
        return chosen

    def _admit(self) -> None:
        for cache, rows in self._prefill_isolating(self._take_waiting()):
            self._join(cache, rows)

    def _prefill_isolating(self, group) -> list[tuple[BatchCache, list[_Row]]]:
        """`_prefill` of the group; if it fails, of each request alone, so that a fault fails
        only the request that causes it."""
        if not group:
            return []
        try:
            part = self._prefill(group)
            return [part] if part else []
        except Exception:
            if len(group) > 1:
                return [part for one in group for part in self._prefill_isolating([one])]
            log.exception("prefill failed for request %d", group[0][0].id)
            group[0][0].fail(EngineError("generation failed for this request"))
            return []

    def _prefill(self, group) -> tuple[BatchCache, list[_Row]] | None:
        """Compute the prompts of `group` (a cached prefix each, the rest fed in one forward,
        right-aligned), and their first tokens."""
        suffix = max(len(r.prompt) - reused for r, _, reused in group)
        reuse = [max(0, len(r.prompt) - suffix) for r, _, _ in group]  # never more than was found
        prefixes = [e.kv if e else None for _, e, _ in group]
        cache = BatchCache.from_prefixes(prefixes, reuse, self.spec, spare=suffix + 32)
        width = cache.width + suffix
        ids = torch.full((len(group), suffix), self.pad_id, dtype=torch.long)
        starts = []
        for b, (request, _, _) in enumerate(group):
            tail = request.prompt[reuse[b] :]
            ids[b, suffix - len(tail) :] = torch.tensor(tail)
            starts.append(width - len(request.prompt))
            request.cached_tokens = reuse[b]
            if reuse[b]:
                self.hits += 1
            else:
                self.misses += 1
        device = self.spec.device
        starts_t = torch.tensor(starts, device=device)
        positions = (torch.arange(cache.width, width, device=device)[None, :] - starts_t[:, None]).clamp(min=0)
        mask = self._mask(starts_t, cache.width, suffix)
        tokens = self._forward(ids.to(device), positions, mask, cache, [r for r, _, _ in group])
        rows = []
        for b, ((request, _, _), start, token) in enumerate(zip(group, starts, tokens, strict=True)):
            row = _Row(request, start)
            if not self._advance(row, token, cache, b):
                rows.append(row)
        kept = [b for b, (request, _, _) in enumerate(group) if not request.done]
        if not kept:
            return None
        if len(kept) < len(group):
            cache.keep(kept, 0)
        return cache, rows

    def _join(self, cache: BatchCache, rows: list[_Row]) -> None:
        if self.cache is None:
            self.cache, self.rows = cache, rows
            return
        self.cache, (old_shift, new_shift) = BatchCache.stack([self.cache, cache])
        for row in self.rows:
            row.start += old_shift
        for row in rows:
            row.start += new_shift
        self.rows += rows

    def pin_waiting(self, prefix: list[int], adapter: str | None) -> None:
        """`_pin` for one adapter's conversations (a brand's system prompt), from a thread other
        than the engine's: waits until it is computed."""
        self.between_steps(lambda: self._pin(prefix, self.adapters.index(adapter) if self.adapters else BASE)).result()

    def _pin(self, prefix: list[int], adapter: int = BASE) -> None:
        """Compute the shared prefix (the system prompt) once; every conversation reuses it."""
        if self.adapters:
            self.adapters.route([adapter])
        cache = BatchCache.from_prefixes([None], [0], self.spec, spare=len(prefix))
        starts = torch.zeros(1, dtype=torch.long, device=self.spec.device)
        positions = torch.arange(len(prefix), device=self.spec.device)[None]
        ids = torch.tensor([prefix], device=self.spec.device)
        self._forward(ids, positions, self._mask(starts, 0, len(prefix)), cache)
        self.prompts.add(prefix, cache.row(0, 0, len(prefix)), pinned=True, adapter=adapter)

    # -- decode ----------------------------------------------------------------------------
    def _decode(self) -> None:
        cache, device = self.cache, self.spec.device
        width = cache.width
        starts = torch.tensor([row.start for row in self.rows], device=device)
        ids = torch.tensor([[row.last] for row in self.rows], device=device)
        positions = (width - starts)[:, None]
        requests = [row.request for row in self.rows]
        tokens = self._forward(ids, positions, self._mask(starts, width, 1), cache, requests)
        next_tokens = enumerate(zip(self.rows, tokens, strict=True))
        finished = {b for b, (row, token) in next_tokens if self._advance(row, token, cache, b)}
        if finished:
            keep = [b for b in range(len(self.rows)) if b not in finished]
            self.rows = [self.rows[b] for b in keep]
            if not keep:
                self.cache = None
                return
            trim = min(row.start for row in self.rows)
            cache.keep(keep, trim)
            for row in self.rows:
                row.start -= trim

    def _advance(self, row: _Row, token: int, cache: BatchCache, b: int) -> bool:
        """Give the row its new token; True when it has finished (its KV goes to the prompt cache)."""
        request = row.request
        try:
            if request.cancelled:
                reason = CANCELLED
            elif token in self.stop_ids and not self.ignore_eos:
                reason = STOP
            else:
                request.token(token)
                self.generated_tokens += 1
                row.last = token
                if len(request.generated) < request.max_new_tokens:
                    return False
                reason = LENGTH
            request.finish(reason)
            seen = (request.prompt + request.generated)[: cache.width - row.start]
            self.prompts.add(seen, cache.row(b, row.start, row.start + len(seen)), adapter=request.adapter)
        except Exception as e:  # this request's bookkeeping failed: it alone ends
            log.exception("request %d failed", request.id)
            request.fail(EngineError(f"generation failed: {type(e).__name__}"))
        return True
