"""Put CUB-200-2011 (or its synthetic stand-in) where the CUB runner reads it; what is in place is checked and kept.

    python data_scripts/build_cub.py [--source PATH] [--data-dir DIR] [--no-download]
    python data_scripts/build_cub.py --synthetic [--classes N] [--images-per-class N]

Real CUB: ``--source`` (default $STN_CUB_SOURCE) is CUB_200_2011.tgz, a folder holding it, or the extracted
CUB_200_2011/ folder; without one the archive is downloaded into <data-dir>/cub/ (network needed, about
1.1 GB, md5-checked). The tree lands in <data-dir>/CUB_200_2011/ after its checks (11,788 images, 5,994 train
/ 5,794 test, 200 classes, every listed image present). ``make data-cub`` runs this.

``--synthetic`` writes the synthetic stand-in (birds made of two textured parts on clutter, in CUB's exact
format) into <data-dir>/synthetic-cub/CUB_200_2011/ (``make data-cub-synthetic``): for CPU runs and tests
where CUB is unavailable. It is not CUB, and everything trained on it says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from stn_repro.data import DEFAULT_SEED
from stn_repro.data.cub.prepare import SOURCE_ENV, prepare_cub
from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.synthetic.cub import SYNTHETIC_DEFAULTS, build_synthetic_cub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, help=f"CUB_200_2011.tgz or the extracted folder (default: ${SOURCE_ENV})"
    )
    parser.add_argument("--data-dir", type=Path, help="data folder (default: $STN_DATA, else <project>/data)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    parser.add_argument("--synthetic", action="store_true", help="write the synthetic stand-in instead")
    parser.add_argument(
        "--classes", type=int, default=SYNTHETIC_DEFAULTS["classes"], help="--synthetic: classes"
    )
    parser.add_argument(
        "--images-per-class",
        type=int,
        default=SYNTHETIC_DEFAULTS["images_per_class"],
        help="--synthetic: images per class (half train, half test)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="--synthetic: base seed")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="--synthetic: rendering threads"
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    start = time.perf_counter()
    try:
        if args.synthetic:
            if args.source:
                parser.error("--synthetic writes its own images; it takes no --source")
            root = build_synthetic_cub(
                data_dir,
                classes=args.classes,
                images_per_class=args.images_per_class,
                seed=args.seed,
                workers=args.workers,
            )
        else:
            root = prepare_cub(data_dir, args.source, download=not args.no_download)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kind = "synthetic CUB stand-in" if args.synthetic else "CUB-200-2011"
    print(f"{kind} ready in {root} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
