"""Score finished distorted-MNIST runs on their validation and test digits undistorted, to tell whether the
validation error sits above the test error because of the held-out digits or the distortions.

python -m experiments.val_vs_test --records results/records/mnist_fast --out results/mnist_val_vs_test.md
python -m experiments.val_vs_test results/records/mnist_fast/p-cnn-none/seed1 [more run folders ...]

Needs runs that held validation digits out (the `fast` profile) and kept `model.pt`, and MNIST in the data
folder (`make data-mnist`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from stn_repro.data.files import DataError
from stn_repro.io import atomic_write_text
from stn_repro.training.records import device_name, git_commit
from stn_repro.val_vs_test import distortion_draws, markdown, plain_digit_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run folders holding record.json and model.pt")
    parser.add_argument(
        "--records", type=Path, default=None, help="also every run folder <cell>/seed<k> below this folder"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST (default $STN_DATA or data/)")
    args = parser.parse_args(argv)
    runs = list(args.runs)
    if args.records is not None:
        runs += sorted(record.parent for record in args.records.glob("*/seed*/record.json"))
    if not runs:
        parser.error("no runs: give run folders, or --records <folder of <cell>/seed<k> run folders>")
    rows = []
    for run in runs:
        try:
            rows.append(plain_digit_errors(run, args.data_dir))
        except (FileNotFoundError, DataError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{rows[-1]['cell']} seed {rows[-1]['seed']}: done", file=sys.stderr)
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    commit = git_commit()
    short = commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")
    provenance = f"commit {short}, {device_name(torch.device('cpu'))}"
    try:
        draws = {
            name: distortion_draws(name, args.data_dir) for name in dict.fromkeys(r["set"] for r in rows)
        }
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = markdown(rows, f"python -m experiments.val_vs_test {argv_text}", provenance, draws)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
