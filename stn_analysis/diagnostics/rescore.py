"""Score a finished MNIST or addition run's saved weights on the test set built here, beside the error in
its record.

stn-rescore results/records/mnist_paper/r-st_fcn-affine/seed1 [more run folders ...]
stn-rescore results/records/addition_paper/addition-fcn-none/seed1
stn-rescore --write results/records/mnist_fast/*/seed*

For records that `make table` flags (scored on a test set whose sha256 differs from today's build): the
weights (`model.pt` beside `record.json`) are rebuilt and evaluated on today's stored test set, so the two
errors can be compared. With --write, a record scored on another set keeps that score on today's set too
(its `rescored` list: error, set checksum, commit, device, date), and `make table` then shows that error,
unflagged; the run's own `test_error` is never changed. Without --write nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from stn_analysis.records import scored_on
from stn_repro.data.files import DataError
from stn_repro.data.sets import load_set, summarise_test_set
from stn_repro.tasks.addition import load_trained_addition_model
from stn_repro.tasks.mnist import load_trained_mnist_model
from stn_repro.training.learners import evaluate
from stn_repro.training.records import RECORD_NAME, device_name, git_commit, read_record, write_record

# The loader of each experiment whose test set `make data-mnist` stores: one per name in
# stn_repro.tables.STORED_TEST_SET_EXPERIMENTS, the experiments whose tables flag records by test set.
LOADERS = {"mnist": load_trained_mnist_model, "addition": load_trained_addition_model}


def load_kept_run(
    run_dir: Path, data_dir: Path | None = None, action: str = "rescored"
) -> tuple[dict, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``(record, model, test images, test labels)`` of a finished MNIST or addition run that kept its
    weights, the model rebuilt from ``model.pt`` and the test set today's stored one; an error naming
    ``action`` for a run of another experiment or without weights."""
    record = read_record(run_dir / RECORD_NAME)
    experiment = record.get("experiment", "mnist")  # records made before the field are MNIST's
    if experiment not in LOADERS:
        raise ValueError(
            f"{run_dir} is a {experiment} run: only runs scored on a stored set "
            f"({', '.join(LOADERS)}) can be {action} here"
        )
    if not (run_dir / "model.pt").exists():
        raise FileNotFoundError(
            f"{run_dir} has no model.pt: only runs whose weights were kept can be {action}"
        )
    images, labels = load_set(record["data"], "test", data_dir)
    return record, LOADERS[experiment](run_dir), images, labels


def rescore(run_dir: Path, data_dir: Path | None = None, *, write: bool = False) -> dict:
    """The record's test error and test-set checksum against today's, for the weights in ``run_dir``; with
    ``write``, a record scored on another test set gets today's score added to its ``rescored`` list."""
    record, model, images, labels = load_kept_run(run_dir, data_dir)
    result = {
        "cell": record["cell"],
        "seed": record["seed"],
        "recorded_error": record["test_error"],
        "error_today": evaluate(model, images, labels),
        "same_test_set": scored_on(record, images, labels),
        "written": False,
    }
    if write and not result["same_test_set"]:
        test_set = summarise_test_set(record["test_set"].get("source", "mnist"), images, labels)
        earlier = [r for r in record.get("rescored", []) if r["test_set"]["sha256"] != test_set["sha256"]]
        record["rescored"] = [
            *earlier,
            {
                "test_error": result["error_today"],
                "test_set": test_set,
                "commit": git_commit(),
                "device": device_name(torch.device("cpu")),
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        ]
        write_record(run_dir / RECORD_NAME, record)
        result["written"] = True
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding record.json and model.pt")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST sets (default $STN_DATA or data/)")
    parser.add_argument(
        "--write", action="store_true", help="keep today's score in records scored on another test set"
    )
    args = parser.parse_args(argv)
    failed = 0
    for run_dir in args.runs:
        try:
            result = rescore(run_dir, args.data_dir, write=args.write)
        except (FileNotFoundError, DataError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        same = "the same test set" if result["same_test_set"] else "a test set that differs from today's"
        print(
            f"{result['cell']} seed {result['seed']}: recorded {result['recorded_error']:.2f}% (on {same}), "
            f"today {result['error_today']:.2f}%" + (" (written to its record)" if result["written"] else "")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
