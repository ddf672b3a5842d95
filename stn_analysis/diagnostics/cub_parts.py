"""Where a finished CUB ST-CNN run's parts go on the test split, against the annotated object boxes.

stn-cub-parts runs/cub/quick/synthetic-cub448-st_cnn_2x/seed1 [more run folders ...]
stn-cub-parts <runs ...> --out results/cub_parts_quick_synthetic.md

For each part: its mean centre and spread over the test images, the correlation of its centre with the
object's (bird's) centre, and how much of the object box it covers; then the union of the parts beside two
layouts that ignore the image (every part at its mean centre; the initial tiling). Parts that find the bird
follow it (r near 1) and cover more of it than the fixed layouts do. Nothing is trained.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stn_analysis.diagnostics.run_report import run_report_main
from stn_repro.data.cub.dataset import CubCrops, CubDataset
from stn_repro.data.cub.index import load_cub_index
from stn_repro.tasks.cub import PartPlacement, load_trained_cub_model, part_placement
from stn_repro.training.records import RECORD_NAME, read_record


def placement_markdown(record: dict, placement: PartPlacement) -> str:
    size = record["input_px"]
    spread = placement.object_centres.std(0).tolist()
    lines = [
        f"## {record['cell']} seed {record['seed']}",
        "",
        f"{len(placement.union_coverage)} test images, {size} px inputs, {record.get('part_px')} px parts; "
        f"test error {record['test_error']:.2f}%; commit {record['commit'][:12]}, profile "
        f"{record['profile']}{', SYNTHETIC data' if record.get('synthetic') else ''}. The object (bird) "
        f"centre's spread over the images: {spread[0]:.1f} px (x), {spread[1]:.1f} px (y).",
        "",
        "| part | mean centre (x, y) px | spread (x, y) px | r with the object's x | r with its y | "
        "object covered |",
        "|---|---|---|---|---|---|",
    ]
    for k in range(placement.part_centres.shape[1]):
        centre = placement.part_centres[:, k]
        mean, std = centre.mean(0).tolist(), centre.std(0).tolist()
        lines.append(
            f"| {k + 1} | ({mean[0]:.1f}, {mean[1]:.1f}) | ({std[0]:.1f}, {std[1]:.1f}) | "
            f"{placement.correlation(k, 0):+.2f} | {placement.correlation(k, 1):+.2f} | "
            f"{100 * placement.coverage[:, k].mean():.1f}% |"
        )
    lines += [
        f"| all parts | | | | | {100 * placement.union_coverage.mean():.1f}% |",
        "",
        "The share of the object box that the parts cover together, mean over the test images: learned "
        f"{100 * placement.union_coverage.mean():.1f}%; every part at its mean centre for every image "
        f"{100 * placement.fixed_coverage.mean():.1f}%; the initial tiling "
        f"{100 * placement.tiling_coverage.mean():.1f}%.",
        "",
    ]
    return "\n".join(lines)


def describe(run_dir: Path, data_dir: Path | None = None) -> str:
    record = read_record(run_dir / RECORD_NAME)
    if record.get("experiment") != "cub" or not record.get("parts"):
        raise ValueError(f"{run_dir} is not a CUB ST-CNN run (its record has no parts)")
    index = load_cub_index(data_dir, synthetic=bool(record.get("synthetic")))
    test = CubDataset(index, "test", CubCrops(resize=record["resize_px"], crop=record["input_px"]))
    return placement_markdown(record, part_placement(load_trained_cub_model(run_dir), test))


def main(argv: list[str] | None = None) -> int:
    return run_report_main(argv, __doc__, "stn-cub-parts", "Where the CUB ST-CNNs' parts go", describe)


if __name__ == "__main__":
    sys.exit(main())
