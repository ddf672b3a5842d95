"""The validation runs that chose a profile's optimisation, as one Markdown table (validation error only).

stn-tuning-table --runs runs_tuning --out results/mnist_fast_tuning.md
stn-tuning-table --runs results/records/mnist_fast/tc-st_fcn-affine \
    results/records/mnist_fast/tc-st_cnn-affine results/records/mnist_fast_other_settings \
    --out results/mnist_fast_tuning_tc.md   # the TC cells' localisation lr (trainer/fast.yaml)

Each row is one run record under ``--runs`` (trained with ``data.hold_out_validation=true``): its cell, the
config values in which the runs differ (``optim.lr``, ...), the validation error at the end, its best, and
the images until it first reached the paper's test error. Test errors are left out on purpose: the choice
is made on validation digits only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stn_analysis.records import collect_records
from stn_analysis.tables.aggregate import OPTIM_DEFAULTS, first_reaching
from stn_repro.data.svhn.stored import NUM_VALIDATION as SVHN_VALIDATION
from stn_repro.io import atomic_write_text

PAPER_IMAGES = {"mnist": 150_000 * 256, "svhn": 400_000 * 128}  # the paper's training, per experiment
VALIDATION = {
    "mnist": "5k held-out training digits, distorted as the test set",
    "svhn": f"the {SVHN_VALIDATION:,} training pictures held out as the validation split",
}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """A record's config, flat, with the optimiser keys it lacks at the runner's defaults (it trained so)."""
    flat = flatten(record.get("config") or {})
    return {f"optim.{key}": value for key, value in OPTIM_DEFAULTS.items()} | flat


# Keys that do not change the training (where it runs, how often it is scored), or that hold the per-cell
# choices themselves (trainer.localisation_lr_multiplier_by_cell resolves into optim.*).
IGNORED = (
    "paths.",
    "seed",
    "trainer.num_threads",
    "trainer.device",
    "trainer.eval_every",
    "trainer.localisation_lr_multiplier_by_cell",
    "logger.",
)


def varying_keys(records: list[dict[str, Any]]) -> list[str]:
    """The optimisation and trainer keys whose values differ between records of the same cell."""
    flat = [run_settings(r) for r in records]
    keys = sorted({k for f in flat for k in f if k.startswith(("optim.", "trainer."))})
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for record, f in zip(records, flat, strict=True):
        by_cell.setdefault(record["cell"], []).append(f)
    return [
        k
        for k in keys
        if not k.startswith(IGNORED)
        and any(len({repr(f.get(k)) for f in group}) > 1 for group in by_cell.values())
    ]


SCORE_COLUMNS = ("images", "final val", "best val", "paper", "reached at (images, % of paper's)")


def tuning_markdown(records: list[dict[str, Any]], title: str) -> str:
    records = [r for r in records if any("val_error" in e for e in r.get("history") or [])]
    if not records:
        raise ValueError(
            "no finished runs with a validation history (train with data.hold_out_validation=true)"
        )
    keys = varying_keys(records)
    seeded = len({r["seed"] for r in records}) > 1  # a seed column where the runs have several
    experiment = records[0].get("experiment", "mnist")  # records made before the field are MNIST's
    lines = [
        f"# {title}",
        "",
        f"Validation error ({VALIDATION.get(experiment, 'the validation split')}) of each tuning run; test "
        "errors are not shown: the choice is made on these numbers only. `reached` is the first evaluation "
        "where the validation error was at or below the paper's test error.",
        "",
        "| " + " | ".join(["cell", *(["seed"] if seeded else []), *keys, *SCORE_COLUMNS]) + " |",
        "|---" * (len(keys) + 6 + seeded) + "|",
    ]
    for record in sorted(
        records,
        key=lambda r: (r["cell"], repr([run_settings(r).get(k) for k in keys]), r["seed"]),
    ):
        flat = run_settings(record)
        vals = [e for e in record["history"] if "val_error" in e]
        paper = record.get("paper_error")
        hit = first_reaching(record["history"], paper) if paper is not None else None
        reached = (
            f"{hit['iteration'] * record['batch_size']:,} ({100 * hit['iteration'] * record['batch_size'] / PAPER_IMAGES[experiment]:.1f}%)"
            if hit
            else "not reached"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    record["cell"],
                    *([str(record["seed"])] if seeded else []),
                    *(str(flat.get(k)) for k in keys),
                ]
            )
            + f" | {record['images_seen']:,} | {vals[-1]['val_error']:.2f} | {min(e['val_error'] for e in vals):.2f} | "
            f"{paper} | {reached} |"
        )
    commits = sorted({r["commit"].split()[0][:12] for r in records})  # "<sha> (given by STN_COMMIT...)"
    devices = sorted({r["device"] for r in records})
    lines += [
        "",
        f"- {len(records)} runs, seed(s) {', '.join(sorted({str(r['seed']) for r in records}))}; "
        f"commits {', '.join(commits)}; devices {'; '.join(devices)}.",
        "- Made by `stn-tuning-table` from the run records.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="folder(s) searched for record.json"
    )
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    parser.add_argument("--title", default="Tuning the `fast` profile on validation digits")
    args = parser.parse_args(argv)
    try:
        text = tuning_markdown([r for runs in args.runs for r in collect_records(runs)], args.title)
    except ValueError as error:
        print(f"error: {error} (under {', '.join(map(str, args.runs))})", file=sys.stderr)
        return 1
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
