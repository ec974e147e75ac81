"""Contextual indexing: the text a note is embedded and searched by, beside its body.

A conversation turn alone is often unfindable: "It went better than I hoped" answers "how did
the interview go?" only through the turn before it, "I'm on crutches since last weekend" answers
"what happened in May 2023?" only through the session's date, and "Caroline: ..." answers a
question about Caroline only if the speaker is part of what is searched. So a note may carry a
``context`` (memory/notes.py): what :func:`turn_context` writes from the turn's speaker, the date
it was said, relative dates in it resolved against that date ("yesterday" said on 8 May 2023 is
7 May 2023), and a window of neighbouring turns. The context is embedded and indexed with the
note (migration 018); the note is still returned as the turn.

:func:`date_terms` is the same resolution for a search query ("last month" asked today), so a
question and the turns it asks about meet on the same absolute words ("April 2023").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_CONTEXT_CHARS = 4000
NEIGHBOUR_CHARS = 300  # of each neighbouring turn, so a long neighbour cannot crowd the turn out

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "a couple of": 2, "a few": 3}
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
_RELATIVE = re.compile(
    r"\b(?P<phrase>yesterday|today|tonight|tomorrow|this morning|last night"
    r"|(?P<which>last|this|next|on) (?P<day>" + "|".join(_WEEKDAYS) + r"|weekend|week|month|year)"
    r"|(?P<count>\d+|" + "|".join(_NUMBERS) + r") (?P<unit>day|week|month|year)s? ago)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation: who said what, and when (either may be unknown)."""

    text: str
    speaker: str = ""
    at: datetime | None = None


def day_words(day: datetime) -> str:
    """A date as the words people search by: ``Monday 8 May 2023``."""
    return f"{day.strftime('%A')} {day.day} {day.strftime('%B %Y')}"


def _shift_months(day: datetime, months: int) -> datetime:
    month = day.month - 1 + months
    return day.replace(year=day.year + month // 12, month=month % 12 + 1, day=1)


def _resolve(match: re.Match[str], anchor: datetime) -> str:
    """The absolute date (or month, or year) one relative expression means."""
    phrase = match["phrase"].lower()
    simple = {"yesterday": -1, "today": 0, "tonight": 0, "this morning": 0, "last night": -1}
    if phrase in simple:
        return day_words(anchor + timedelta(days=simple[phrase]))
    if phrase == "tomorrow":
        return day_words(anchor + timedelta(days=1))
    if match["count"]:
        count = match["count"].lower()
        n = int(count) if count.isdigit() else _NUMBERS[count]
        unit = match["unit"].lower()
        if unit == "month":
            return _shift_months(anchor, -n).strftime("%B %Y")
        if unit == "year":
            return str(anchor.year - n)
        return day_words(anchor - timedelta(days=n * _UNIT_DAYS[unit]))
    which, day = match["which"].lower(), match["day"].lower()
    step = {"last": -1, "this": 0, "on": 0, "next": 1}[which]
    if day == "month":
        return _shift_months(anchor, step).strftime("%B %Y")
    if day == "year":
        return str(anchor.year + step)
    if day == "week":
        return f"week of {day_words(anchor + timedelta(days=7 * step))}"
    target = 5 if day == "weekend" else _WEEKDAYS.index(day)
    back = (anchor.weekday() - target) % 7
    if step > 0:
        return day_words(anchor + timedelta(days=(target - anchor.weekday()) % 7 or 7))
    if which == "last" and back == 0:
        back = 7
    return day_words(anchor - timedelta(days=back))


def date_terms(text: str, anchor: datetime) -> list[str]:
    """The absolute dates the relative expressions in ``text`` mean, said at ``anchor``."""
    return list(dict.fromkeys(_resolve(m, anchor) for m in _RELATIVE.finditer(text)))


def _line(turn: Turn) -> str:
    return f"{turn.speaker}: {turn.text}" if turn.speaker else turn.text


def turn_context(turn: Turn, *, before: Sequence[Turn] = (), after: Sequence[Turn] = ()) -> str:
    """The context to index a turn by (not the turn itself, which is the note's body).

    Who said it and when, with the relative dates in it resolved, then the neighbouring turns
    (``before`` in order, nearest last; ``after``, nearest first), each cut to
    :data:`NEIGHBOUR_CHARS`, the whole to :data:`MAX_CONTEXT_CHARS`.
    """
    said = f"Said by {turn.speaker}" if turn.speaker else "Said"
    if turn.at is not None:
        said += f" on {day_words(turn.at)}"
        resolved = date_terms(turn.text, turn.at)
        if resolved:
            said += f" (about {', '.join(resolved)})"
    parts = [said + "."] if said != "Said" else []
    for label, turns in (("Before", before), ("After", after)):
        parts += [f"{label}, {_line(other)[:NEIGHBOUR_CHARS]}" for other in turns]
    return "\n".join(parts)[:MAX_CONTEXT_CHARS]


def window_contexts(turns: Sequence[Turn], window: int) -> list[str]:
    """Each turn's context with up to ``window`` turns either side of it in ``turns``."""
    return [
        turn_context(
            turn, before=turns[max(0, i - window) : i], after=turns[i + 1 : i + 1 + window]
        )
        for i, turn in enumerate(turns)
    ]
