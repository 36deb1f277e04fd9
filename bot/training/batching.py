"""Batches of similar length, so little compute goes to padding.

Sorting by length and then shuffling the order of the batches (not their contents) wastes far
less on padding than random batches, while every epoch still sees the batches in a new order;
docs/benchmarks.md, section "Training throughput", gives the measured figures and the benchmark
that measures them.
Packing several dialogues into one row would waste even less, but without FlashAttention the
samples would attend to each other, so it is not used here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from bot.rendering import IGNORE_INDEX, Example


class LengthGroupedBatches:
    """A batch sampler: indices sorted by length, cut into batches, batches shuffled per epoch
    with a generator seeded by (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *, shuffle: bool = True):
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            yield from self.batches
            return
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        for i in torch.randperm(len(self.batches), generator=generator).tolist():
            yield self.batches[i]


class TokenBudgetBatches(LengthGroupedBatches):
    """Batches by a token budget instead of a row count (`train.tokens_per_batch`, CUDA only):
    indices sorted by length, and each batch takes the next ones while its padded size (rows x
    its longest) stays within `tokens_per_batch`, so short dialogues go many to a batch and long
    ones few, at about the same memory and step time. A sequence longer than the budget is a
    batch of its own. Batches are shuffled per epoch as in LengthGroupedBatches."""

    def __init__(self, lengths: Sequence[int], tokens_per_batch: int, seed: int, *, shuffle: bool = True):
        super().__init__(lengths, 1, seed, shuffle=shuffle)
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        self.tokens_per_batch = tokens_per_batch
        self.batches = []
        for i in order:  # ascending: the newcomer is the batch's longest
            batch = self.batches[-1] if self.batches else None
            if batch is not None and lengths[i] * (len(batch) + 1) <= tokens_per_batch:
                batch.append(i)
            else:
                self.batches.append([i])


def batch_sampler(lengths: Sequence[int], train, *, cuda: bool, shuffle: bool = True) -> LengthGroupedBatches:
    """The batches `train` (a TrainConfig) asks for: by token budget when `tokens_per_batch` is
    set and training runs on CUDA, else `batch_size` rows (the budget is ignored on the CPU)."""
    if train.tokens_per_batch and cuda:
        return TokenBudgetBatches(lengths, train.tokens_per_batch, train.seed, shuffle=shuffle)
    return LengthGroupedBatches(lengths, train.batch_size, train.seed, shuffle=shuffle)


class RandomBatches(LengthGroupedBatches):
    """The naive baseline: random order, each batch padded to its longest (benchmarks only)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        super().__init__(lengths, batch_size, seed)
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest in the batch; padding is masked in attention and in the loss."""
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / padded if padded else 0.0
