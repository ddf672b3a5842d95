"""Park unfinished runs in the repository at the end of a working session; restore them in the next.

python -m experiments.park save      # copy every unfinished run's checkpoint from runs/ to parked/
python -m experiments.park restore   # put them back into runs/ and print each run's relaunch command
python -m experiments.park list      # what is parked, where each run stopped

`make park` and `make unpark` run the first two. Commit `parked/` after `save` (a checkpoint is a few MB);
relaunching a restored run's command resumes it exactly where it stopped, and its record lists every launch
(`launches`). A later `save` drops the parked copies of runs that have finished. The runs folder is
$STN_RUNS, else runs/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stn_repro.park import park, parked_runs, progress_text, unpark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["save", "restore", "list"])
    parser.add_argument(
        "--runs", type=Path, default=Path(os.environ.get("STN_RUNS", "runs")), help="the runs folder"
    )
    parser.add_argument("--parked", type=Path, default=Path("parked"), help="where parked runs are kept")
    args = parser.parse_args(argv)
    try:
        if args.action == "save":
            entries = park(args.runs, args.parked)
        elif args.action == "restore":
            entries = unpark(args.runs, args.parked)
        else:
            entries = parked_runs(args.parked)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not entries:
        print(f"nothing parked in {args.parked}")
        return 0
    heading = {"save": "parked now", "restore": "relaunch to resume", "list": "parked"}[args.action]
    print(f"\n{heading}:")
    for entry in entries:
        print(f"  {entry.relative} ({progress_text(entry.info)}): {entry.command}")
    if args.action == "save":
        print(f"\ncommit {args.parked}/ to keep them: git add {args.parked} && git commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
