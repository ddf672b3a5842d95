"""Did a finished run's localisation net collapse? How much each spatial transformer's predicted parameters
vary over the test set built here, from the run's saved weights.

stn-localisation-spread results/records/mnist_fast/tc-st_cnn-affine/seed1 [more run folders ...]
stn-localisation-spread --write --records results/records/mnist_fast --out results/localisation_spread.md

Each transformer's spread is the largest standard deviation of one of its predicted parameters over the
first 256 test images (stn_repro.transformers.localisation_spread); 0 means the localisation net gives
every image the same transform (dead hidden units): the transformer is a fixed warp, and the run's error is
a plain classifier's behind it. Runs finished since this check record the spread themselves. With --write,
a record without it gets it (with the commit and date of this check) and `make table` marks cells with a
collapsed run (§); without --write nothing is written. Runs without transformers are skipped; --records
DIR checks every DIR/<cell>/seed<k> that kept its weights.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stn_analysis.bookkeeping.recipes import other_settings
from stn_analysis.diagnostics.rescore import load_kept_run
from stn_repro.data.files import DataError
from stn_repro.data.sets import set_checksum
from stn_repro.io import atomic_write_text
from stn_repro.training.learners import SPREAD_IMAGES, spread_on_test_set
from stn_repro.training.records import RECORD_NAME, git_commit, write_record
from stn_repro.transformers import spread_collapsed


def check_run(run_dir: Path, data_dir: Path | None = None, *, write: bool = False) -> dict[str, Any] | None:
    """The spread of the transformers of the weights in ``run_dir`` on today's test set (``None`` for a
    model without transformers); with ``write``, stored in a record that has none."""
    record, model, images, labels = load_kept_run(run_dir, data_dir, "checked")
    spread = spread_on_test_set(model, {"test": (images, labels)})
    if spread is None:
        return None
    result = {
        "cell": record["cell"],
        "seed": record["seed"],
        "profile": record["profile"],
        "test_error": record["test_error"],
        "spread": spread,
        "written": False,
        # a run trained with other optimiser settings than its profile gives the cell says which
        "settings": other_settings(record.get("experiment", "mnist"), record["profile"])(record),
    }
    if write and record.get("localisation_spread") is None:
        record["localisation_spread"] = spread
        record["localisation_spread_from"] = {
            "commit": git_commit(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "images": min(SPREAD_IMAGES, len(labels)),
            "test_set_sha256": set_checksum(images, labels),
        }
        write_record(run_dir / RECORD_NAME, record)
        result["written"] = True
    return result


def markdown(results: list[dict[str, Any]], command: str) -> str:
    """Every checked run's spread, collapsed runs first."""
    results = sorted(results, key=lambda r: (not spread_collapsed(r["spread"]), r["cell"]))
    hit = sum(spread_collapsed(r["spread"]) for r in results)
    lines = [
        "# Localisation nets that collapsed",
        "",
        f"Each run's spread: per spatial transformer, the largest standard deviation of one predicted parameter "
        f"over the first {SPREAD_IMAGES} images of the test set built here, from the run's saved weights. 0 is "
        "a localisation net that gives every image the same transform (a fixed warp). "
        f"{hit} of {len(results)} runs collapsed.",
        "",
        "| run | profile | % test error | spread | collapsed |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        spread = ", ".join(f"{value:.3g}" for value in r["spread"])
        mark = "**yes**" if spread_collapsed(r["spread"]) else "no"
        settings = f" ({r['settings']})" if r.get("settings") else ""
        lines.append(
            f"| {r['cell']} seed {r['seed']}{settings} | {r['profile']} | {r['test_error']:.2f} | {spread} | {mark} |"
        )
    lines += ["", f"Made by `{command}` from the runs' `model.pt` and the stored test sets."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run folders holding record.json and model.pt")
    parser.add_argument(
        "--records",
        type=Path,
        action="append",
        default=[],
        help="check every <cell>/seed<k> here (repeatable)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST sets (default $STN_DATA or data/)")
    parser.add_argument("--write", action="store_true", help="store the spread in records that lack it")
    parser.add_argument("--out", type=Path, default=None, help="also write the list as Markdown here")
    args = parser.parse_args(argv)
    runs = list(args.runs)
    for root in args.records:
        runs += sorted(path.parent for path in root.glob("*/seed*/model.pt"))
    if not runs:
        parser.error("give run folders or --records DIR (a folder of <cell>/seed<k> runs with model.pt)")
    failed, results = 0, []
    for run_dir in runs:
        try:
            result = check_run(run_dir, args.data_dir, write=args.write)
        except (FileNotFoundError, DataError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        if result is None:
            continue
        results.append(result)
        state = "COLLAPSED (a fixed warp)" if spread_collapsed(result["spread"]) else "varies"
        print(
            f"{result['cell']} seed {result['seed']} ({result['profile']}): spread "
            f"{', '.join(f'{v:.3g}' for v in result['spread'])}: {state}"
            + (" (written to its record)" if result["written"] else "")
        )
    if args.out is not None and results:
        command = "stn-localisation-spread " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, markdown(results, command))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
