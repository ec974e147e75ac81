"""Summarise a py-spy profile: the frames that cost the most, by own time and with callees.

Reads the collapsed stacks that ``py-spy record --format raw`` writes (one ``frame;frame;…
count`` line each) and prints the top frames as percentages of all samples: ``self`` is the
time in the frame itself, ``inclusive`` the time in it and everything it called. File paths are
cut to the package (``uvicorn/…``, ``hub/…``) so lines read the same on any machine.

Run: ``python bench/profile_summary.py hub.txt --top 25`` (see README, "Profiling the hub").
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")
_ROOTS = ("site-packages/", "/lib/python3.12/", "/work/main/")


def frame_name(frame: str) -> str:
    """``function (package/module.py)``: the line number and the path's prefix dropped."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for root in _ROOTS:
        path = path.split(root, 1)[-1]
    return f"{match['function']} ({path})"


def tally(lines: Iterable[str]) -> tuple[Counter[str], Counter[str], int]:
    """Samples per frame, own and inclusive (a frame counted once per stack), and the total."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [frame_name(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
        total += samples
    return own, inclusive, total


def main(argv: Sequence[str] | None = None) -> None:
    """Print the top frames of a profile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=20, help="frames per list")
    args = parser.parse_args(argv)
    own, inclusive, total = tally(args.profile.read_text().splitlines())
    print(f"{total} samples")
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title}")
        for frame, samples in counts.most_common(args.top):
            print(f"{100 * samples / max(total, 1):5.1f}% {frame}")


if __name__ == "__main__":
    main()
