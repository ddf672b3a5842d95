"""How the found boxes of finished co-localisation runs miss: size or place.

stn-coloc-boxes --runs results/records/coloc_paper --profile paper
stn-coloc-boxes --profile fast      # the runs under $STN_RUNS/coloc (else runs/coloc)

For every finished run of the profile (the default negatives and every length; studies of other negatives are
left out), its saved transformer's boxes on the 100 images it was trained on, against the true boxes: the
share localised (IoU > 0.5, Table 5's metric), the mean IoU, the median of the found side over the true side
and of the distance between the centres, and two what-ifs that tell size from place: the share that would be
localised with the true size at the found centre, and with the found size at the true centre. Means over
seeds per class, and over classes per set; written as Markdown (``--out``, default
runs/tables/coloc_boxes_<profile>.md; the committed ones: --out results/...) and printed.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from stn_analysis.diagnostics.coloc_landscape import class_images
from stn_analysis.paths import runs_dir
from stn_analysis.records import collect_records
from stn_analysis.tables.coloc import COLOC_DATA, DEFAULT_NEGATIVES
from stn_repro.io import atomic_write_text
from stn_repro.models.coloc import box_errors
from stn_repro.paper import COLOC_SET_LABELS, coloc_paper_text
from stn_repro.tasks.coloc.learner import IOU_THRESHOLD, predicted_boxes
from stn_repro.tasks.coloc.task import load_trained_transformer
from stn_repro.training.records import git_commit, short_commit

# name, heading, format: the per-run numbers, in the table's column order
COLUMNS = (
    ("localised", "localised %", "{:.1f}"),
    ("mean_iou", "mean IoU", "{:.2f}"),
    ("size_ratio", "side / true side (median)", "{:.2f}"),
    ("centre_offset_px", "centre off by px (median)", "{:.1f}"),
    ("localised_true_size", "localised % if true size at found centre", "{:.1f}"),
    ("localised_true_centre", "localised % if found size at true centre", "{:.1f}"),
)


def run_box_summary(record: dict[str, Any], data_dir: Path | None = None) -> dict[str, float]:
    """One finished run's numbers (:data:`COLUMNS`): its transformer's boxes on the images it trained on."""
    run_dir = Path(record["path"]).parent
    source = "synthetic" if record.get("synthetic") else "mnist"
    images, true = class_images(record["data"], record["digit"], source, data_dir, record["test_set"]["size"])
    errors = box_errors(predicted_boxes(load_trained_transformer(run_dir), images), true)
    localised = 100.0 * (errors["iou"] > IOU_THRESHOLD).sum().item() / len(images)
    if abs(localised - (100.0 - record["test_error"])) > 1e-3:  # one image is 1%
        raise ValueError(
            f"{run_dir}: its saved transformer localises {localised:.1f}% here but its record says "
            f"{100.0 - record['test_error']:.1f}%: another test set (rebuild it with `make data-mnist`) or weights"
        )
    return {
        "localised": localised,
        "mean_iou": errors["iou"].mean().item(),
        "size_ratio": errors["size_ratio"].median().item(),
        "centre_offset_px": errors["centre_offset_px"].median().item(),
        "localised_true_size": 100.0 * (errors["iou_true_size"] > IOU_THRESHOLD).float().mean().item(),
        "localised_true_centre": 100.0 * (errors["iou_true_centre"] > IOU_THRESHOLD).float().mean().item(),
    }


def boxes_markdown(
    summaries: dict[tuple[str, int], list[dict[str, float]]], profile: str, source: str, runs_dir: Path
) -> str:
    """The table: a row per (set, digit) with the means over its seeds, and a mean row per set."""
    lines = [
        f"# Co-localisation (Table 5), profile `{profile}`: how the found boxes miss",
        "",
        "Per digit class, over the seeds run: the share of the 100 images localised (IoU > 0.5, Table 5's "
        "metric), the mean IoU, the median of the found box's side over the true box's (1: the right size) and "
        "of the distance between their centres in pixels (the images are 84 px, a digit's box 28 px), and the "
        "share that would be localised with the true size at the found centre (only the size wrong) or with "
        "the found size at the true centre (only the place wrong).",
        "",
        "| set | digit | seeds | "
        + " | ".join(heading for _, heading, _ in COLUMNS)
        + " | paper localised % |",
        "|---|---|---" + "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for data in COLOC_DATA:
        keys = sorted(k for k in summaries if k[0] == data)
        for key in keys:
            runs = summaries[key]
            cells = [fmt.format(statistics.fmean(r[name] for r in runs)) for name, _, fmt in COLUMNS]
            lines.append(
                f"| {COLOC_SET_LABELS[data]} | {key[1]} | {len(runs)} | {' | '.join(cells)} | {coloc_paper_text(data)} |"
            )
        if keys:
            per_class = [
                {name: statistics.fmean(r[name] for r in summaries[k]) for name, _, _ in COLUMNS}
                for k in keys
            ]
            cells = [
                f"**{fmt.format(statistics.fmean(c[name] for c in per_class))}**" for name, _, fmt in COLUMNS
            ]
            lines.append(
                f"| {COLOC_SET_LABELS[data]} | **mean** ({len(keys)} classes) | | {' | '.join(cells)} | "
                f"{coloc_paper_text(data)} |"
            )
    runs = [r for rs in summaries.values() for r in rs]
    lines += [
        "",
        f"- Runs: {len(runs)}, each its saved transformer on the images it trained on ({source} digits); "
        "a run's localised share is checked against its record.",
        f"- Made by `stn-coloc-boxes --runs {runs_dir} --profile {profile}` at commit `{short_commit(git_commit())}`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=runs_dir() / "coloc",
        help="a folder of finished co-localisation runs (default $STN_RUNS/coloc, else runs/coloc)",
    )
    parser.add_argument("--profile", required=True, help="the profile of the runs: paper, fast, ...")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: $STN_RUNS/tables/coloc_boxes_<profile>.md (runs/tables/)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="the data folder (default: STN_DATA or data/)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = [
        r
        for r in collect_records(args.runs)
        if r.get("experiment") == "coloc"
        and r["profile"] == args.profile
        and r.get("choices", {}).get("negatives", DEFAULT_NEGATIVES) == DEFAULT_NEGATIVES
    ]
    if not records:
        parser.error(f"no finished co-localisation runs of profile {args.profile!r} under {args.runs}")
    sources = {"synthetic" if r.get("synthetic") else "MNIST" for r in records}
    if len(sources) > 1:
        parser.error(f"{args.runs} holds runs on MNIST and on synthetic digits: give a folder of one kind")
    summaries: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r["data"], r["digit"], r["seed"])):
        summaries[(record["data"], record["digit"])].append(run_box_summary(record, args.data_dir))
    text = boxes_markdown(summaries, args.profile, sources.pop(), args.runs)
    out = args.out or runs_dir() / "tables" / f"coloc_boxes_{args.profile}.md"
    atomic_write_text(out, text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
