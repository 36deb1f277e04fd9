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
from bot.engine.speculation import MAX_DRAFT, Drafter

log = logging.getLogger("bot.engine")


@dataclass
class _Row:
    request: Request
    start: int  # first column of this row in the batch cache
    last: int = 0  # the token to feed next
    hidden: int = 0  # columns from `start` on that hold no token of this row (rejected guesses)
    drafter: Drafter | None = None  # its prompt-lookup guesses, when the engine speculates


# Columns a decode step may feed in all when rows guess (rows x (1 + longest guess)). On a CPU a
# pass costs about its weights' reading plus a few ms per column, so guesses only pay while the
# batch is small (16 customers: none); a GPU computes hundreds of columns in the time of one.
SPECULATION_COLUMNS = {"cpu": 16, "cuda": 256}
COMPACT_AFTER = 48  # hidden columns a row may gather before the cache is rebuilt without them


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
        speculation: bool = True,
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
        self.speculation = speculation
        self.decode_steps = self.drafted_tokens = self.accepted_tokens = self.forced_tokens = 0
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
            decode_steps=self.decode_steps,
            drafted_tokens=self.drafted_tokens,
            accepted_tokens=self.accepted_tokens,
            forced_tokens=self.forced_tokens,
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
        states = self._states(ids, positions, mask, cache, requests)
        return self._pick(states[:, -1], requests)

    def _states(self, ids, positions, mask, cache: BatchCache, requests=()) -> torch.Tensor:
        """The decoder's last hidden states [rows, columns, hidden] of `ids` fed after `cache`."""
        if self.adapters and requests:  # without requests (a pinned prefix), the caller has routed
            self.adapters.route([r.adapter for r in requests])
        out = self.decoder(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True)
        return out.last_hidden_state

    def _logits(self, states: torch.Tensor, requests) -> torch.Tensor:
        """The output layer on `states` [rows, hidden] as one 2-D matmul (the model's own
        `logits_to_keep` slices a 3-D tensor, and on the CPU that matmul copies the whole output
        layer once per row: 1.2 s instead of 0.1 s to prefill 14 rows here), masked where a token
        may not come: end-of-turn under `ignore_eos`, and inside a tool call each row's
        request's constraint as it stands now."""
        logits = self.head(states).float()
        if self.ignore_eos:
            logits[:, list(self.stop_ids)] = float("-inf")
        for b, request in enumerate(requests):
            calls = request.calls
            if calls and calls.active:  # inside a tool call: only tokens that keep it valid
                logits[b].masked_fill_(~calls.allowed().to(logits.device), float("-inf"))
        return logits

    def _pick(self, states: torch.Tensor, requests) -> list[int]:
        return pick_tokens(self._logits(states, requests), requests).tolist()

    def _mask(
        self, starts: torch.Tensor, first_query: int, queries: int, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Additive mask [rows, 1, queries, keys]: query column q sees key column k when the key
        is its row's (k >= start, and not one of its `hidden` columns [rows, first_query]) and
        not in its future (k <= q). A finite minimum, not -inf, so a padding query that sees
        nothing gives finite values, never NaN."""
        keys = torch.arange(first_query + queries, device=starts.device)
        query_cols = torch.arange(first_query, first_query + queries, device=starts.device)
        visible = (keys[None, None, :] >= starts[:, None, None]) & (keys[None, None, :] <= query_cols[None, :, None])
        if hidden is not None:
            shown = torch.cat([~hidden, hidden.new_ones(hidden.shape[0], queries)], 1)
            visible &= shown[:, None, :]
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
            if not self._advance(row, token, cache, b, cache.width - start):
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
        """One forward pass for every row: its last token, and after it the tokens it guesses
        (prompt lookup, greedy rows only). A row keeps the guesses greedy decoding agrees with,
        one by one, and the token after them; the columns of the rest are hidden."""
        cache, device, rows = self.cache, self.spec.device, self.rows
        width = cache.width
        drafts, forced = self._drafts()
        fed = 1 + max(len(d) for d in drafts)
        ids = torch.full((len(rows), fed), self.pad_id, dtype=torch.long)
        for b, (row, draft) in enumerate(zip(rows, drafts, strict=True)):
            ids[b, : 1 + len(draft)] = torch.tensor([row.last, *draft])
        starts = torch.tensor([row.start for row in rows], device=device)
        lengths = torch.tensor([width - row.start - row.hidden for row in rows], device=device)
        positions = lengths[:, None] + torch.arange(fed, device=device)[None, :]
        requests = [row.request for row in rows]
        mask = self._mask(starts, width, fed, cache.hidden_columns(width))
        states = self._states(ids.to(device), positions, mask, cache, requests)
        self.decode_steps += 1
        tokens = self._pick(states[:, 0], requests)
        kept = [0] * len(rows)  # each row's guesses kept
        finished = set()
        going = []  # rows whose guess at their next column was right so far
        for b, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if self._advance(row, token, cache, b, width - row.start - row.hidden + 1):
                finished.add(b)
            elif drafts[b] and token == drafts[b][0]:
                going.append(b)
        while going:  # the token after each row's kept guesses, all rows' at once, then the next
            column = kept[going[0]] + 1
            picked = self._pick(states[going, column], [rows[b].request for b in going])
            still = []
            for b, token in zip(going, picked, strict=True):
                row, draft = rows[b], drafts[b]
                kept[b] = column
                if self._advance(row, token, cache, b, width - row.start - row.hidden + 1 + column):
                    finished.add(b)
                elif column < len(draft) and token == draft[column]:
                    still.append(b)
            going = still
        for row, draft, k, by_grammar in zip(rows, drafts, kept, forced, strict=True):
            self.drafted_tokens += len(draft)
            self.accepted_tokens += k
            if row.drafter and not by_grammar:
                row.drafter.accepted(len(draft), k)
        self._keep_columns(width, fed, [1 + k for k in kept], finished)

    def _drafts(self) -> tuple[list[list[int]], list[bool]]:
        """Each row's guesses for this step, and whether the call grammar forced them (else:
        prompt lookup); none for a sampled row or without speculation; together at most
        SPECULATION_COLUMNS columns fed."""
        rows = self.rows
        forced_rows = [False] * len(rows)
        if not self.speculation:
            return [[] for _ in rows], forced_rows
        limit = min(SPECULATION_COLUMNS.get(self.spec.device.type, 16) // len(rows) - 1, MAX_DRAFT)
        drafts = []
        for b, row in enumerate(rows):
            request = row.request
            left = request.max_new_tokens - len(request.generated) - 1  # the token after them is written too
            if request.temperature > 0 or limit <= 0 or left <= 0:
                drafts.append([])
                continue
            forced = request.calls.forced() if request.calls else []
            if forced:  # what the call grammar allows alone (JSON keys, quotes, an action's name)
                drafts.append(forced[: min(limit, left)])
                forced_rows[b] = True
                self.forced_tokens += len(drafts[-1])
                continue
            if row.drafter is None:
                row.drafter = Drafter(request.prompt)
            drafter = row.drafter
            drafter.extend(request.generated[len(drafter.tokens) - len(request.prompt) :])
            drafts.append(drafter.draft(min(limit, left)))
        return drafts, forced_rows

    def _keep_columns(self, width: int, fed: int, kept: list[int], finished: set[int]) -> None:
        """After a step that fed `fed` columns from `width` on, row b kept `kept[b]` of them:
        the rest are hidden (or dropped, beyond every row's kept ones); finished rows leave."""
        cache = self.cache
        going_on = [b for b in range(len(self.rows)) if b not in finished]
        if not going_on:
            self.rows, self.cache = [], None
            return
        new_width = width + max(kept[b] for b in going_on)
        if new_width < width + fed:
            cache.rollback(new_width)
        for b in going_on:
            if width + kept[b] < new_width:
                cache.hide(b, width + kept[b], new_width)
                self.rows[b].hidden += new_width - width - kept[b]
        if finished:
            self.rows = [self.rows[b] for b in going_on]
            trim = min(row.start for row in self.rows)
            cache.keep(going_on, trim)
            for row in self.rows:
                row.start -= trim
        if max(row.hidden for row in self.rows) > COMPACT_AFTER:
            for row, start in zip(self.rows, cache.compact([row.start for row in self.rows]), strict=True):
                row.start, row.hidden = start, 0

    def _advance(self, row: _Row, token: int, cache: BatchCache, b: int, in_cache: int) -> bool:
        """Give the row its new token; True when it has finished (its KV, `in_cache` tokens of
        it, goes to the prompt cache)."""
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
            seen = (request.prompt + request.generated)[:in_cache]
            self.prompts.add(seen, cache.row(b, row.start, len(seen)), adapter=request.adapter)
        except Exception as e:  # this request's bookkeeping failed: it alone ends
            log.exception("request %d failed", request.id)
            request.fail(EngineError(f"generation failed: {type(e).__name__}"))
        return True
