"""Why the held-out validation error sits above the test error: the digits or the distortions?

Every distorted-MNIST run that holds out validation digits (the ``fast`` profile) reports a validation error a
few tenths of a point above its test error. The two stored sets are made by the same generator from different
MNIST digits (the 5k of :func:`~stn_repro.data.sets.validation_indices` and the 10k official test digits), so
the gap comes from the digits, from the draw of distortions, or from chance. :func:`plain_digit_errors` scores
a run's saved model on the same digits undistorted (centred in the model's canvas, which every set's
distribution covers: angle 0, scale 1, no offset, no clutter): a gap that stays there is the digits'.
:func:`distortion_draws` compares how strongly the two sets' images were distorted (the same distribution,
two draws). :func:`markdown` sets the gaps side by side per data set.

From the command line: score finished distorted-MNIST runs on their validation and test digits undistorted, to tell whether the
validation error sits above the test error because of the held-out digits or the distortions.

stn-val-vs-test --records results/records/mnist_fast --out results/mnist_val_vs_test.md
stn-val-vs-test results/records/mnist_fast/p-cnn-none/seed1 [more run folders ...]

Needs runs that held validation digits out (the `fast` profile) and kept `model.pt`, and MNIST in the data
folder (`make data-mnist`).
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from stn_repro.data.distortions import DISTORTION_SIZE, distortion_size
from stn_repro.data.files import DataError
from stn_repro.data.mnist import load_mnist
from stn_repro.data.sets import NUM_VALIDATION, load_set_arrays, validation_indices
from stn_repro.io import atomic_write_text
from stn_repro.tasks.mnist import load_trained_mnist_model
from stn_repro.training.learners import evaluate
from stn_repro.training.records import RECORD_NAME, device_name, git_commit, read_record


def centred(digits_uint8: Tensor, size: int) -> Tensor:
    """``[N, 28, 28]`` uint8 digits as ``[N, 1, size, size]`` uint8, each centred on a black canvas
    (``size`` >= 28; an odd margin puts the extra pixel after the digit)."""
    if digits_uint8.ndim != 3 or digits_uint8.dtype != torch.uint8:
        raise ValueError(f"need [N, H, W] uint8 digits, got {tuple(digits_uint8.shape)} {digits_uint8.dtype}")
    height, width = digits_uint8.shape[-2:]
    if size < max(height, width):
        raise ValueError(f"a {size}x{size} canvas cannot hold {height}x{width} digits")
    top, left = (size - height) // 2, (size - width) // 2
    padding = (left, size - width - left, top, size - height - top)
    return F.pad(digits_uint8, padding).unsqueeze(1)


def plain_digit_errors(run_dir: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """A finished run's recorded validation and test errors (distorted digits) beside its saved model's
    errors on the same validation and test digits undistorted. Needs a run that held validation out."""
    run_dir = Path(run_dir)
    record = read_record(run_dir / RECORD_NAME)
    if record.get("val_error") is None:
        raise ValueError(f"{run_dir} held no validation digits out (its record has no val_error)")
    size = int(record["config"]["data"]["image_size"])
    mnist = load_mnist(data_dir)
    val_index = validation_indices()
    model = load_trained_mnist_model(run_dir)
    return {
        "run": str(run_dir),
        "cell": record["cell"],
        "set": record["data"],
        "seed": record["seed"],
        "val_error": record["val_error"],
        "test_error": record["test_error"],
        "val_size": NUM_VALIDATION,
        "test_size": record["test_set"]["size"],
        "plain_val_error": evaluate(
            model, centred(mnist.train_images[val_index], size), mnist.train_labels[val_index]
        ),
        "plain_test_error": evaluate(model, centred(mnist.test_images, size), mnist.test_labels),
    }


def gap_standard_error(row: dict[str, Any]) -> float:
    """The standard error (% points) of a run's validation-minus-test gap from the two sets' sizes alone:
    ``sqrt(v (100 - v) / n_val + t (100 - t) / n_test)``, the spread two independent draws of the sets would
    give the same model."""
    val, test = row["val_error"], row["test_error"]
    return math.sqrt(val * (100 - val) / row["val_size"] + test * (100 - test) / row["test_size"])


def distortion_draws(set_name: str, data_dir: Path | None = None) -> dict[str, float] | None:
    """The mean distortion size (:func:`~stn_repro.data.distortions.distortion_size`) of the stored
    validation and test sets and their difference in standard errors (``z``); ``None`` for a set without a
    distortion size (TC only translates)."""
    if set_name not in DISTORTION_SIZE:
        return None
    sizes = {
        split: distortion_size(set_name, load_set_arrays(set_name, split, data_dir)).double()
        for split in ("val", "test")
    }
    val, test = sizes["val"], sizes["test"]
    standard_error = (val.var() / len(val) + test.var() / len(test)).sqrt()
    return {
        "size_name": DISTORTION_SIZE[set_name],
        "val": float(val.mean()),
        "test": float(test.mean()),
        "z": float((val.mean() - test.mean()) / standard_error),
    }


def markdown(
    rows: list[dict[str, Any]],
    command: str,
    provenance: str,
    draws: dict[str, dict[str, float] | None] | None = None,
) -> str:
    """Per data set: the mean validation-minus-test gap on the distorted sets and on the plain digits (and,
    from ``draws``, :func:`distortion_draws` of the set), then every run's four errors."""
    by_set: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_set[row["set"]].append(row)
    lines = [
        "# Validation against test error: the digits or the distortions?",
        "",
        "Each run's recorded errors on the stored distorted validation (5k held-out training digits) and test "
        "(10k official test digits) sets, and its saved model's errors on the same digits undistorted, centred "
        "in its input canvas. A gap that stays on plain digits comes from which digits were held out, not from "
        "the distortions. Every run is scored on the same two fixed sets, so a chance difference between them "
        "shows in every run alike: compare a set's mean gap with the standard error one run's gap has from "
        "the sets' sizes alone.",
        "",
        "| set | runs | val − test, distorted | its standard error from the set sizes | val − test, plain digits "
        "| runs with plain val > test | mean distortion, val / test (difference in standard errors) |",
        "|---|---|---|---|---|---|---|",
    ]
    draws = draws or {}
    for name, group in by_set.items():
        distorted = [r["val_error"] - r["test_error"] for r in group]
        plain = [r["plain_val_error"] - r["plain_test_error"] for r in group]
        draw = draws.get(name)
        sizes = (
            "-"
            if draw is None
            else f"{draw['val']:.3g} / {draw['test']:.3g} ({draw['z']:+.1f}), {draw['size_name']}"
        )
        lines.append(
            f"| {name} | {len(group)} | {statistics.mean(distorted):+.2f} | "
            f"{statistics.mean(gap_standard_error(r) for r in group):.2f} | {statistics.mean(plain):+.2f} | "
            f"{sum(p > 0 for p in plain)} of {len(group)} | {sizes} |"
        )
    lines += [
        "",
        "| run | val | test | plain val | plain test |",
        "|---|---|---|---|---|",
        *(
            f"| {r['cell']} seed {r['seed']} | {r['val_error']:.2f} | {r['test_error']:.2f} | "
            f"{r['plain_val_error']:.2f} | {r['plain_test_error']:.2f} |"
            for r in rows
        ),
        "",
        f"Made by `{command}` ({provenance}) from the runs' records and `model.pt`.",
        "",
    ]
    return "\n".join(lines)


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
    text = markdown(rows, f"stn-val-vs-test {argv_text}", provenance, draws)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
