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
