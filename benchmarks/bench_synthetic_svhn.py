"""The synthetic SVHN stand-in: how long building it takes, and where its digits lie in the crops.

Builds ``--count`` pictures of the default stand-in (four fifths ``train``, one fifth ``test``; MNIST from
``--data-dir``) into a temporary folder with ``--workers`` threads, times the tree and the import at 64
and 128 px, and extrapolates both to the default size (:data:`SYNTHETIC_COUNTS`). Then, from the tree's
``truth.json``, where the union of the digits' true ink boxes lies in each crop (``ink_in_crop``: centre
and extent as fractions of the crop's side) with the annotated boxes, and with the ink boxes themselves
as annotation (version 1's construction, whose boxes were the ink boxes).

    python benchmarks/bench_synthetic_svhn.py --data-dir data --out results/bench/<file>.txt
    python benchmarks/bench_synthetic_svhn.py --count 50        # a smoke check
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from stn_repro.data import load_mnist
from stn_repro.data.svhn.digit_struct import DIGIT_STRUCT, read_digit_struct
from stn_repro.data.synthetic.svhn import (
    SYNTHETIC_COUNTS,
    SYNTHETIC_NAME,
    SYNTHETIC_VERSION,
    build_synthetic_svhn,
    ink_in_crop,
    make_synthetic_svhn_tree,
    read_truth,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000, help="pictures to build (default 1000)")
    parser.add_argument("--workers", type=int, default=1, help="threads (default 1)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where MNIST is (default $STN_DATA or data/)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text)
        lines.append(text)

    mnist = load_mnist(args.data_dir)
    digits = {"train": mnist.train_images, "test": mnist.test_images}
    labels = {"train": mnist.train_labels, "test": mnist.test_labels}
    test = max(1, args.count // 5)
    counts = {"train": args.count - test, "test": test}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    say(f"synthetic SVHN stand-in v{SYNTHETIC_VERSION}: build time and ink in the crops")
    say(
        f"commit {commit or 'unknown'}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}"
    )
    say(f"{counts['train']} train + {counts['test']} test pictures, {args.workers} worker thread(s)")
    say(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start (other jobs slow it)")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        quiet = lambda _line: None  # noqa: E731
        start = time.perf_counter()
        tree = make_synthetic_svhn_tree(
            root / SYNTHETIC_NAME, digits, labels, counts, workers=args.workers, log=quiet
        )
        tree_s = time.perf_counter() - start
        start = time.perf_counter()
        build_synthetic_svhn(
            root,
            digits,
            labels,
            counts=counts,
            num_validation=max(1, counts["train"] // 8),
            workers=args.workers,
            log=quiet,
        )
        import_s = time.perf_counter() - start
        tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
        records, truth = [], []
        for split in counts:
            records += read_digit_struct(tree / split / DIGIT_STRUCT)
            truth += read_truth(tree / split)
    n, full = args.count, sum(SYNTHETIC_COUNTS.values())
    say(f"load average {os.getloadavg()[0]:.1f} at the end")
    say()
    say(
        f"tree: {tree_s:.1f} s ({tree_s / n * 1000:.1f} ms a picture), {tree_bytes / n / 1000:.0f} kB a picture"
    )
    say(f"import at 64 and 128 px: {import_s:.1f} s ({import_s / n * 1000:.1f} ms a picture)")
    total = (tree_s + import_s) / n * full / 60
    say(
        f"extrapolated to the default {full:,} pictures: tree {tree_s / n * full / 60:.1f} min, import "
        f"{import_s / n * full / 60:.1f} min, about {total:.0f} min in all; tree {tree_bytes / n * full / 1e9:.1f} GB"
    )
    for size in (64, 128):
        say()
        say(f"ink in the {size} px crop (fraction of its side): mean, std, 5th-95th percentile")
        for name, exact in (("annotated boxes (v2)", False), ("exact ink boxes (v1's construction)", True)):
            spread = np.array(
                [
                    ink_in_crop(t["ink_boxes"] if exact else r.boxes, t["ink_boxes"], size)
                    for r, t in zip(records, truth, strict=True)
                ]
            )
            cut = (
                ((spread[:, :2] - spread[:, 2:] / 2 < 0) | (spread[:, :2] + spread[:, 2:] / 2 > 1))
                .any(1)
                .mean()
            )
            parts = [
                f"{key} {spread[:, j].mean():.3f} ± {spread[:, j].std():.3f} ({np.percentile(spread[:, j], 5):.2f}-{np.percentile(spread[:, j], 95):.2f})"
                for j, key in enumerate(("centre x", "centre y", "width", "height"))
            ]
            say(f"  {name}: " + ", ".join(parts) + f"; ink cut by the crop in {100 * cut:.1f}% of pictures")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
