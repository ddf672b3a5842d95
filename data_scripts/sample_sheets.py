"""Draw a sample sheet per distorted-MNIST set into results/samples/<set>.png, and of the synthetic SVHN
stand-in's 64 and 128 px crops (synthetic_svhn64.png, synthetic_svhn128.png).

    python data_scripts/sample_sheets.py [--data-dir DIR] [--out DIR] [--seed N] [--synthetic] [--only mnist|svhn]

Needs the fetched MNIST (``make data-mnist``); ``--synthetic`` draws from the synthetic test digits instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stn_repro.data import load_mnist, synthetic_mnist
from stn_repro.data.files import DataError
from stn_repro.data.sheets import write_sample_sheets, write_svhn_sheets

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, help="data folder (default: $STN_DATA, else <project>/data)")
    parser.add_argument(
        "--out", type=Path, default=PROJECT_ROOT / "results" / "samples", help="output folder"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the samples (default 0)")
    parser.add_argument("--synthetic", action="store_true", help="use synthetic digits, no MNIST needed")
    parser.add_argument(
        "--only", choices=("mnist", "svhn"), help="only the MNIST sets' sheets, or only the SVHN stand-in's"
    )
    args = parser.parse_args(argv)
    try:
        mnist = synthetic_mnist(num_train=1200, num_test=64) if args.synthetic else load_mnist(args.data_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    paths = [] if args.only == "svhn" else write_sample_sheets(mnist, args.out, seed=args.seed)
    paths += [] if args.only == "mnist" else write_svhn_sheets(mnist, args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
