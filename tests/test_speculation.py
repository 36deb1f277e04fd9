"""Prompt-lookup drafts (bot.engine.speculation): the latest earlier occurrence of the longest
suffix that occurred before, and a guess length that follows the guesses' success."""

from bot.engine.speculation import MAX_DRAFT, MIN_DRAFT, START_DRAFT, Drafter


def test_a_draft_continues_the_latest_earlier_occurrence_of_the_longest_suffix():
    drafter = Drafter([5, 6, 7, 1, 2, 9, 5, 6, 8, 4, 3, 6])
    assert drafter.draft() == [8, 4, 3, 6]  # only "6" occurred before: its latest place, up to the end
    drafter = Drafter([1, 2, 3, 40, 41, 9, 2, 3, 50, 51, 9, 1, 2, 3])
    assert drafter.draft() == [40, 41, 9, 2]  # "1 2 3" beats the later "2 3"
    drafter.extend([40])
    assert drafter.draft(2) == [41, 9]


def test_no_draft_when_the_suffix_never_occurred_before():
    assert Drafter([1, 2, 3, 4]).draft() == []
    assert Drafter([]).draft() == []


def test_the_draft_grows_while_guesses_are_right_and_shrinks_when_none_is():
    drafter = Drafter([1, 2, 1, 2, 1, 2])
    assert drafter.k == START_DRAFT
    for _ in range(10):
        drafter.accepted(drafter.k, drafter.k)
    assert drafter.k == MAX_DRAFT
    drafter.accepted(4, 2)  # some right: unchanged
    assert drafter.k == MAX_DRAFT
    for _ in range(20):
        drafter.accepted(drafter.k, 0)
    assert drafter.k == MIN_DRAFT
    drafter.accepted(0, 0)  # nothing guessed: nothing learnt
    assert drafter.k == MIN_DRAFT


def cache_of(rows: int, width: int):
    """A one-layer BatchCache whose key at (row b, column k) is the number 100 * b + k."""
    import torch

    from bot.engine.kv import BatchCache, _Layer

    keys = (100 * torch.arange(rows)[:, None] + torch.arange(width)[None, :]).float()[:, None, :, None]
    return BatchCache([_Layer(keys.clone(), keys.clone(), width)])


def shown(pairs) -> list[int]:
    """The numbers of one row's copied-out keys."""
    return [int(v) for v in pairs[0][0].flatten()]


def test_hidden_columns_are_skipped_when_a_row_is_copied_out_compacted_or_stacked():
    """A row's rejected guesses are hidden: its copy for the prompt cache skips them, a rebuild
    drops them and right-aligns every row again, and joining other rows keeps them hidden."""
    from bot.engine.kv import BatchCache

    cache = cache_of(2, 8)
    cache.hide(0, 3, 5)  # row 0: columns 3 and 4 are rejected guesses
    assert shown(cache.row(0, 1, 5)) == [1, 2, 5, 6, 7]
    assert shown(cache.row(1, 1, 5)) == [101, 102, 103, 104, 105]
    joined, shifts = BatchCache.stack([cache_of(1, 10), cache])
    assert shifts == [0, 2] and joined.hidden_columns(10)[1].tolist() == [False] * 5 + [True] * 2 + [False] * 3
    assert shown(joined.row(1, 3, 5)) == [1, 2, 5, 6, 7]
    starts = cache.compact([1, 2])  # row 0 keeps 5 of its 7 columns from 1 on, row 1 all 6 from 2 on
    assert starts == [1, 0] and cache.hidden is None and cache.width == 6
    assert shown(cache.row(0, 1, 5)) == [1, 2, 5, 6, 7]
    assert shown(cache.row(1, 0, 6)) == [102, 103, 104, 105, 106, 107]
