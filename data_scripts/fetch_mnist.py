"""Fetch MNIST into <data-dir>/mnist: copy from a local folder (gzipped or raw idx) or download; verify md5.

    python data_scripts/fetch_mnist.py [--source DIR] [--data-dir DIR]

``--source`` defaults to $STN_MNIST_SOURCE (without either, the files are downloaded); ``--data-dir``
defaults to $STN_DATA, else <project>/data. Files already present and verified are left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stn_repro.data import fetch_mnist
from stn_repro.data.files import DataError, default_data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, help="local folder with the four MNIST files (default: $STN_MNIST_SOURCE)"
    )
    parser.add_argument("--data-dir", type=Path, help="data folder (default: $STN_DATA, else <project>/data)")
    args = parser.parse_args(argv)
    try:
        folder = fetch_mnist(args.data_dir or default_data_dir(), args.source)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"MNIST verified in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
