"""Import SVHN format 1 (or build its synthetic stand-in) into stored 64 and 128 px sets; what is current is
skipped.

    python data_scripts/build_svhn_sets.py [--source DIR] [--extra] [--sizes 64 128] [--data-dir DIR]
    python data_scripts/build_svhn_sets.py --synthetic [--train-count N] [--test-count N]

Real SVHN: ``--source`` (default $STN_SVHN_SOURCE) is a folder with train/, test/ (extra/) extracted from
the format-1 download, or the archives train.tar.gz, test.tar.gz (extra.tar.gz); without one the archives
are downloaded into <data-dir>/svhn/ (network needed). Writes <data-dir>/svhn_sets/svhn_<size>px_<split>.h5
for the splits train, val (5,000 images held out of train), test (and extra). ``make data-svhn`` runs this.

``--synthetic`` builds a synthetic SVHN-format tree from the MNIST digits in <data-dir>/mnist (run
``make data-mnist`` first) into <data-dir>/synthetic-svhn/ and imports it with the same code into
synthetic-svhn_<size>px_<split>.h5 (``make data-svhn-synthetic``): a stand-in for CPU runs and tests where
SVHN is unavailable, not SVHN.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from stn_repro.data import DEFAULT_SEED
from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.svhn.importer import SOURCE_ENV, download_svhn, import_svhn
from stn_repro.data.svhn.stored import NUM_VALIDATION
from stn_repro.data.synthetic.svhn import SYNTHETIC_COUNTS, build_synthetic_svhn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, help=f"local folder with the SVHN format-1 splits (default: ${SOURCE_ENV})"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="build the synthetic stand-in from MNIST instead of SVHN"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 128], help="stored image sizes (default: 64 128)"
    )
    parser.add_argument("--extra", action="store_true", help="also import the extra split (202,353 images)")
    parser.add_argument("--data-dir", type=Path, help="data folder (default: $STN_DATA, else <project>/data)")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"base seed (validation choice; default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--num-validation",
        type=int,
        default=NUM_VALIDATION,
        help=f"images of train held out as val (default {NUM_VALIDATION})",
    )
    parser.add_argument(
        "--train-count",
        type=int,
        default=SYNTHETIC_COUNTS["train"],
        help=f"--synthetic: train images, val included (default {SYNTHETIC_COUNTS['train']})",
    )
    parser.add_argument(
        "--test-count",
        type=int,
        default=SYNTHETIC_COUNTS["test"],
        help=f"--synthetic: test images (default {SYNTHETIC_COUNTS['test']})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads that decode and crop (default: the CPU count, at most 8)",
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    start = time.perf_counter()
    try:
        if args.synthetic:
            if args.source or args.extra:
                parser.error("--synthetic builds its own source; it takes neither --source nor --extra")
            build_synthetic_svhn(
                data_dir,
                counts={"train": args.train_count, "test": args.test_count},
                sizes=args.sizes,
                seed=args.seed,
                num_validation=args.num_validation,
                workers=args.workers,
            )
        else:
            splits = ("train", "test", "extra") if args.extra else ("train", "test")
            source = args.source or (Path(os.environ[SOURCE_ENV]) if os.environ.get(SOURCE_ENV) else None)
            if source is None:
                print(f"no --source or ${SOURCE_ENV}: downloading the SVHN archives into {data_dir}/svhn")
                source = download_svhn(data_dir, splits)
            import_svhn(
                source,
                data_dir,
                splits=splits,
                sizes=args.sizes,
                seed=args.seed,
                num_validation=args.num_validation,
                workers=args.workers,
            )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kind = "synthetic SVHN stand-in" if args.synthetic else "SVHN"
    print(f"{kind} sets ready in {data_dir / 'svhn_sets'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
