"""Bin finished distorted-MNIST runs' test errors by how strongly each test image was distorted.

python -m experiments.error_by_distortion results/records/mnist_fast/p-cnn-none/seed1 [more run folders ...]
python -m experiments.error_by_distortion <runs> --edges 0,3,4,5,6,7,8 --out results/mnist_p_error_by_offset.md

R and RTS: the absolute rotation; P: the rms of the 4 corner offsets; E: the rms of the 16 control-point
offsets (px). Each run's `model.pt` is scored again on the stored test set built here (`make data-mnist`).
R, RTS and P runs are also binned by the share of the digit's ink lost off the frame; P and E runs get the
error re-weighted to test sets drawn with other offset stds (--offset-stds).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from stn_repro.data.files import DataError
from stn_repro.error_by_distortion import markdown, run_breakdown
from stn_repro.io import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding record.json and model.pt")
    parser.add_argument("--edges", default=None, help="lower bin edges, comma-separated (default: per set)")
    parser.add_argument(
        "--offset-stds",
        default=None,
        help="P/E: offset stds (px) to re-weigh to, comma-separated (default: per set)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST sets (default $STN_DATA or data/)")
    args = parser.parse_args(argv)
    try:
        edges = None if args.edges is None else [float(e) for e in args.edges.split(",")]
    except ValueError:
        parser.error(f"--edges {args.edges!r}: give comma-separated numbers, e.g. --edges 0,3,4,5,6")
    try:
        stds = None if args.offset_stds is None else [float(e) for e in args.offset_stds.split(",")]
    except ValueError:
        parser.error(
            f"--offset-stds {args.offset_stds!r}: give comma-separated numbers, e.g. --offset-stds 5,4,3"
        )
    try:
        breakdowns = [run_breakdown(run, edges, args.data_dir, stds) for run in args.runs]
    except (FileNotFoundError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    text = markdown(breakdowns, f"python -m experiments.error_by_distortion {argv_text}")
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
