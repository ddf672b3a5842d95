"""Fetch MNIST (if needed) and build every stored distorted-MNIST set; what is current is skipped.

    python data_scripts/build_mnist_sets.py [--source DIR] [--data-dir DIR] [--seed N]

Writes <data-dir>/mnist_sets/{r,rts,p,e,tc,addition}_{test,val}.h5, coloc_test.h5 and coloc_tc_test.h5.
Files already built (verified, same seed) are kept as they are, so rerunning after a set is added only
writes the new one. ``make data-mnist`` runs this.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stn_repro.data import DEFAULT_SEED, build_all_sets, fetch_mnist
from stn_repro.data.files import DataError, default_data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, help="local folder with the four MNIST files (default: $STN_MNIST_SOURCE)"
    )
    parser.add_argument("--data-dir", type=Path, help="data folder (default: $STN_DATA, else <project>/data)")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"base seed of the sets (default {DEFAULT_SEED})"
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    start = time.perf_counter()
    try:
        print(f"MNIST verified in {fetch_mnist(data_dir, args.source)}")
        build_all_sets(data_dir, seed=args.seed)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"distorted-MNIST sets ready in {data_dir / 'mnist_sets'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
