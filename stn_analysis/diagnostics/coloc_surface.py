"""Where the co-localisation loss has its minimum, for each candidate e() and layer weighting (issue 46, step 1).

stn-coloc-surface --embedding r=results/records/mnist_fast/r-cnn-none/seed1 \
    --embedding plain=results/records/coloc_paper/embedding --out results/coloc_surface_tuning.md

For every digit class of T and TC, on the *tuning draw* (the class's images 100-199 of the stored test set,
not the 100 that Table 5 scores), every image gets the same window relative to its own true box: sides
from 0.75 to 2.85 times the true side, centres moved by 0 or 6 px in x and y (9 x 9 windows). The hinge
loss (crop negatives of 28 px, or of the sides ``--crop-sizes`` gives, margin 1, configs/coloc.yaml) is
computed for each window under each scaling of e() (raw, unit length, per layer, logits only). A class counts as *found by the loss* when its lowest-loss
window has IoU > 0.5 with the true box: the windows an optimiser of this loss is pulled to. The loss at the
start (the whole image) and at an empty view (a window wholly outside the image, where every pair agrees) are
shown beside the loss at the true box: a start that already scores lower than the box leaves nothing to
descend, and an empty view that scores lower is a minimum an unbounded window can escape to.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import Tensor

from stn_analysis.diagnostics.coloc_landscape import class_images
from stn_repro.io import atomic_write_text
from stn_repro.models.coloc import (
    COLOC_IMAGE_SIZE,
    COLOC_OUTPUT_SIZE,
    EMBEDDING_NORMS,
    CnnEmbedding,
    box_iou,
    combine_layers,
)
from stn_repro.tasks.coloc.embedding import load_embedding
from stn_repro.tasks.coloc.learner import colocalisation_hinge, random_negatives
from stn_repro.transformers import get_transform, sample

SIDE_RATIOS = (0.75, 0.875, 1.0, 1.15, 1.3, 1.5, 1.8, 2.2, 2.85)  # window side / true side
SHIFTS_PX = (-6.0, 0.0, 6.0)
TUNING_OFFSET = 100  # the tuning draw: the class's images 100-199 (Table 5 scores 0-99)


def relative_windows(boxes: Tensor) -> tuple[list[tuple[float, float, float]], Tensor]:
    """The grid of windows relative to each box: ``[(side ratio, dx, dy)]`` and attention parameters
    ``[W, N, 3]`` (``align_corners=False``: pixel ``p`` is normalised ``2 p / S - 1``, a window of side
    ``a`` px has ``s = a / S``)."""
    centre = (boxes[:, :2] + boxes[:, 2:]).double() / 2
    side = (boxes[:, 2:] - boxes[:, :2]).double().mean(1)
    grid, params = [], []
    for ratio in SIDE_RATIOS:
        for dy in SHIFTS_PX:
            for dx in SHIFTS_PX:
                shifted = centre + torch.tensor([dx, dy], dtype=torch.float64)
                s = ratio * side / COLOC_IMAGE_SIZE
                params.append(torch.cat([s[:, None], 2 * shifted / COLOC_IMAGE_SIZE - 1], dim=1).float())
                grid.append((ratio, dx, dy))
    return grid, torch.stack(params)


def window_iou(ratio: float, dx: float, dy: float, side: float = 28.0) -> float:
    """IoU of a window (side ``ratio * side``, centre moved by ``(dx, dy)``) with the box of side ``side``."""
    half = ratio * side / 2
    found = torch.tensor(
        [[side / 2 + dx - half, side / 2 + dy - half, side / 2 + dx + half, side / 2 + dy + half]]
    )
    return float(box_iou(found, torch.tensor([[0.0, 0.0, side, side]]))[0])


@torch.no_grad()
def surface(
    embedding: CnnEmbedding,
    images: Tensor,
    boxes: Tensor,
    norms: list[str],
    seed: int = 0,
    crop_sizes: tuple[int, ...] | None = None,
) -> dict:
    """For one class: the grid of windows and, per negatives' crop side (``crop_sizes``; default e()'s input
    side) and weighting, ``{"losses": [W], "start": loss at the whole image, "empty": loss at an empty
    view}``. The empty view is what a window wholly outside the image passes on (zeros: the sampler pads
    with zeros), the same for every image: a degenerate minimum where every pair agrees."""
    x = images.float() / 255.0
    family = get_transform("attention")
    side = embedding.input_side
    grid, params = relative_windows(boxes)
    views = [embedding.layers(sample(x, family.grid(p, (side, side)), align_corners=False)) for p in params]
    whole = torch.tensor([[1.0, 0.0, 0.0]]).expand(len(x), 3)
    start = embedding.layers(sample(x, family.grid(whole, (side, side)), align_corners=False))
    empty = embedding.layers(torch.zeros(len(x), 1, side, side))
    by_crop = {}
    for crop in crop_sizes or (side,):
        # the negatives as the learner draws them: a crop of this side, resampled to e()'s input if not 28
        negatives = embedding.layers(random_negatives(x, crop, side, torch.Generator().manual_seed(seed)))
        by_crop[crop] = {}
        for norm in norms:
            r = combine_layers(negatives, norm)
            by_crop[crop][norm] = {
                "losses": [colocalisation_hinge(combine_layers(v, norm), r).item() for v in views],
                "start": colocalisation_hinge(combine_layers(start, norm), r).item(),
                "empty": colocalisation_hinge(combine_layers(empty, norm), r).item(),
            }
    return {"grid": grid, "by_crop": by_crop}


def summarise(per_class: dict[int, dict], norm: str, crop: int = COLOC_OUTPUT_SIZE) -> dict:
    """Over the classes of one set: how many have their lowest-loss window localised, where the minima sit."""
    found, ratios, shifts, true_vs_start, true_vs_empty, rows = 0, [], [], [], [], []
    for digit, result in sorted(per_class.items()):
        grid, scored = result["grid"], result["by_crop"][crop][norm]
        losses = scored["losses"]
        best = min(range(len(losses)), key=losses.__getitem__)
        ratio, dx, dy = grid[best]
        iou = window_iou(ratio, dx, dy)
        true_loss = losses[grid.index((1.0, 0.0, 0.0))]
        found += iou > 0.5
        ratios.append(ratio)
        shifts.append((dx * dx + dy * dy) ** 0.5)
        true_vs_start.append(true_loss < scored["start"])
        true_vs_empty.append(true_loss < scored["empty"])
        rows.append((digit, ratio, dx, dy, iou, losses[best], true_loss, scored["start"], scored["empty"]))
    return {
        "found": found,
        "median_ratio": statistics.median(ratios),
        "median_shift": statistics.median(shifts),
        "true_below_start": sum(true_vs_start),
        "true_below_empty": sum(true_vs_empty),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--embedding",
        action="append",
        required=True,
        metavar="NAME=RUN",
        help="a name and a finished CNN run (a Table 1 CNN record folder or an embedding run); repeatable",
    )
    parser.add_argument("--data", default="coloc_t,coloc_tc")
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--norms", default=",".join(EMBEDDING_NORMS))
    parser.add_argument(
        "--offset", type=int, default=TUNING_OFFSET, help="the class's first image (100: tuning draw)"
    )
    parser.add_argument(
        "--crop-sizes",
        default=str(COLOC_OUTPUT_SIZE),
        help="sides of I_n^rand's crop, comma-separated (coloc.crop_size; not 28: resampled to 28)",
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here (else print it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    norms = args.norms.split(",")
    for norm in norms:
        if norm not in EMBEDDING_NORMS:
            parser.error(f"unknown --norms value {norm!r}; known: {', '.join(EMBEDDING_NORMS)}")
    named = {}
    for item in args.embedding:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--embedding {item!r}: give NAME=RUN")
        named[name] = (path, load_embedding(path))
    sets = args.data.split(",")
    crops = tuple(int(c) for c in args.crop_sizes.split(","))
    digits = [int(d) for d in args.digits.split(",")]
    started = time.time()
    results = {}
    for name, (_, embedding) in named.items():
        for data in sets:
            per_class = {}
            for digit in digits:
                images, boxes = class_images(data, digit, "mnist", args.data_dir, offset=args.offset)
                per_class[digit] = surface(embedding, images, boxes, norms, crop_sizes=crops)
                print(f"{name} {data} digit {digit} done ({time.time() - started:.0f} s)", flush=True)
            results[name, data] = per_class
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    crop_args = "" if crops == (COLOC_OUTPUT_SIZE,) else f" --crop-sizes {args.crop_sizes}"
    lines = [
        "# Where the co-localisation loss is lowest, per e() and layer weighting (tuning draw)",
        "",
        f"Made by `stn-coloc-surface {' '.join('--embedding ' + e for e in args.embedding)}{crop_args}` at "
        f"commit `{commit or 'unknown'}` on {platform.machine()} CPU, one thread, in {time.time() - started:.0f} s. "
        f"Images {args.offset}-{args.offset + 99} of each class (Table 5 scores 0-99). Every image gets the same "
        f"window relative to its true box: side {SIDE_RATIOS[0]:g}-{SIDE_RATIOS[-1]:g} x the true side, centre "
        f"moved {SHIFTS_PX[0]:g} to {SHIFTS_PX[-1]:g} px in x and y; hinge loss with crop negatives of the "
        "side given (resampled to 28 px where it is not 28; seed 0), margin 1. *found*: classes whose "
        "lowest-loss window has IoU > 0.5 with the true box; *box < start*: classes where the true box scores "
        "below the whole image (the start); *box < empty*: below an empty view (a window outside the image).",
        "",
        "| e() | weighting | negatives px | T found | T min side x | T min moved px | T box < start | T box < empty "
        "| TC found | TC min side x | TC min moved px | TC box < start | TC box < empty |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in named:
        for norm in norms:
            for crop in crops:
                cells = []
                for data in ("coloc_t", "coloc_tc"):
                    if (name, data) not in results:
                        cells += ["-"] * 5
                        continue
                    s = summarise(results[name, data], norm, crop)
                    n = len(results[name, data])
                    cells += [
                        f"{s['found']}/{n}",
                        f"{s['median_ratio']:g}",
                        f"{s['median_shift']:.1f}",
                        f"{s['true_below_start']}/{n}",
                        f"{s['true_below_empty']}/{n}",
                    ]
                lines.append(f"| {name} | {norm} | {crop} | {' | '.join(cells)} |")
    lines += ["", "e() runs: " + "; ".join(f"{name}: `{path}`" for name, (path, _) in named.items()), ""]
    lines += [
        "## Per class: the lowest-loss window (side x true side, moved dx, dy px; IoU) and the losses",
        "",
    ]
    for (name, data), per_class in results.items():
        for norm in norms:
            for crop in crops:
                s = summarise(per_class, norm, crop)
                lines.append(
                    f"**{name}, {norm}, {crop} px negatives, {data}**: "
                    + "; ".join(
                        f"{d}: {r:g}x ({dx:+g},{dy:+g}) IoU {iou:.2f}, min {lo:.3g} / box {tl:.3g} / "
                        f"start {st:.3g} / empty {em:.3g}"
                        for d, r, dx, dy, iou, lo, tl, st, em in s["rows"]
                    )
                )
                lines.append("")
    text = "\n".join(lines)
    if args.out is None:
        print(text)
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
