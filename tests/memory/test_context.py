"""Contextual indexing: relative dates resolved against the session, speakers, neighbour windows."""

from __future__ import annotations

from datetime import datetime

from memory.context import (
    MAX_CONTEXT_CHARS,
    NEIGHBOUR_CHARS,
    Turn,
    date_terms,
    day_words,
    turn_context,
    window_contexts,
)

MONDAY = datetime(2023, 5, 8, 13, 56)  # Monday 8 May 2023


def test_relative_dates_resolve_against_when_the_turn_was_said() -> None:
    assert day_words(MONDAY) == "Monday 8 May 2023"
    assert date_terms("I went yesterday", MONDAY) == ["Sunday 7 May 2023"]
    assert date_terms("Last Friday we hiked", MONDAY) == ["Friday 5 May 2023"]
    assert date_terms("last weekend", MONDAY) == ["Saturday 6 May 2023"]
    assert date_terms("last Monday", MONDAY) == ["Monday 1 May 2023"]
    assert date_terms("next Monday", MONDAY) == ["Monday 15 May 2023"]
    assert date_terms("two weeks ago", MONDAY) == ["Monday 24 April 2023"]
    assert date_terms("3 days ago", MONDAY) == ["Friday 5 May 2023"]
    assert date_terms("last month and 2 months ago", MONDAY) == ["April 2023", "March 2023"]
    assert date_terms("last year", MONDAY) == ["2022"]
    assert date_terms("next month", datetime(2023, 12, 3)) == ["January 2024"]
    assert date_terms("last week", MONDAY) == ["week of Monday 1 May 2023"]


def test_text_without_relative_dates_resolves_to_nothing() -> None:
    assert date_terms("We moved to Porto in 2021", MONDAY) == []
    assert date_terms("", MONDAY) == []
    assert date_terms("the weekender", MONDAY) == []


def test_a_turn_context_names_the_speaker_the_date_and_its_neighbours() -> None:
    question = Turn("How was the choir concert on Sunday?", "Kwame", MONDAY)
    reply = Turn("She nailed it, I cried the whole time.", "Ingrid", MONDAY)
    after = Turn("That is wonderful!", "Kwame", MONDAY)
    context = turn_context(reply, before=[question], after=[after])
    assert context.splitlines() == [
        "Said by Ingrid on Monday 8 May 2023.",
        "Before, Kwame: How was the choir concert on Sunday?",
        "After, Kwame: That is wonderful!",
    ]
    dated = turn_context(Turn("I ran a half marathon last weekend", "Ingrid", MONDAY))
    assert dated == "Said by Ingrid on Monday 8 May 2023 (about Saturday 6 May 2023)."


def test_a_turn_without_speaker_or_date_has_only_its_neighbours() -> None:
    assert turn_context(Turn("alone")) == ""
    assert turn_context(Turn("b"), before=[Turn("a")]) == "Before, a"
    long = Turn("x" * 5000, "Ana")
    assert (
        turn_context(Turn("b"), before=[long])
        == f"Before, Ana: {'x' * 5000}"[: len("Before, ") + NEIGHBOUR_CHARS]
    )
    crowd = [Turn("y" * 400, "Ana")] * 40
    assert len(turn_context(Turn("b"), before=crowd)) == MAX_CONTEXT_CHARS


def test_windows_take_the_turns_either_side_within_the_list() -> None:
    turns = [Turn(t, "A") for t in ("one", "two", "three", "four")]
    assert window_contexts(turns, 0) == ["Said by A."] * 4
    contexts = window_contexts(turns, 1)
    assert contexts[0].splitlines() == ["Said by A.", "After, A: two"]
    assert contexts[2].splitlines() == ["Said by A.", "Before, A: two", "After, A: four"]
    assert window_contexts([], 2) == []
