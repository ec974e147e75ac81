"""Federation in one line: gossip between real pools, notes anti-entropy at scale, overflow.

Runs the three federation benchmarks, each a script of its own, and prints their lines as one:

- ``gossip``: ``bench/federation_gossip.py`` — five real pools: membership convergence, round
  time, exchange size, how soon a killed pool is declared dead;
- ``notes``: ``bench/federation_notes.py`` — the tictac reconcile simulated in-process at 100
  and at 5 pools, 10,000 notes, 1 % changed: rounds to converge, bytes against shipping every row;
- ``overflow``: ``bench/overflow.py`` — a streamed chat served by a peer vs locally.

Named ``federation_suite`` because a ``bench/federation.py`` would shadow the ``federation``
package (for mypy, and for every module a script of that name imports). Run:
``python bench/federation_suite.py`` (about three minutes); ``--skip overflow`` leaves a part out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS: dict[str, list[list[str]]] = {
    "gossip": [["federation_gossip.py"]],
    "notes": [
        ["federation_notes.py", "--pools", "100", "--notes", "10000"],
        ["federation_notes.py", "--pools", "5", "--notes", "10000"],
    ],
    "overflow": [["overflow.py"]],
}


def run_part(args: list[str]) -> dict[str, Any]:
    """Run one benchmark script and return its JSON line (its progress goes to our stderr)."""
    done = subprocess.run(
        [sys.executable, str(HERE / args[0]), *args[1:]],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed with exit code {done.returncode}")
    line = done.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(line)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Run the parts not skipped; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--skip", action="append", default=[], choices=sorted(PARTS), help="leave a part out"
    )
    options = parser.parse_args(argv)
    result: dict[str, Any] = {"bench": "federation"}
    for part, runs in PARTS.items():
        if part not in options.skip:
            found = [run_part(args) for args in runs]
            result[part] = found[0] if len(found) == 1 else found
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
