"""Where the co-localisation loss is lowest: the loss at hand-placed windows instead of learned ones.

stn-coloc-landscape --embedding runs/coloc/embedding/quick/mnist/seed1 --digit 5
stn-coloc-landscape --embedding ... --data coloc_tc --digits 0,3,5 --norms unit,none
stn-coloc-landscape --embedding ... --negatives window   # I_n^rand at each window's scale
stn-coloc-landscape --embedding ... --norms unit --margin 4   # every pair in the hinge

For each digit class, the 100 images a co-localisation run sees, and each way of scaling e(), it prints the
hinge loss (configs/coloc.yaml's margin and crop size) with every image's window centred on its true box at
several scales (1/3 on an 84 px T image is the true box), the true-size window moved 10 px off, and one
true-size window at the image centre for every image. If a window larger than the true box scores lower, the
loss itself prefers it, and an optimiser that minimises the loss will not find the boxes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn

from stn_repro.models.coloc import COLOC_IMAGE_SIZE, COLOC_OUTPUT_SIZE, EMBEDDING_NORMS
from stn_repro.tasks.coloc.embedding import load_embedding
from stn_repro.tasks.coloc.learner import box_centred_windows, hinge_at_windows
from stn_repro.tasks.coloc.task import COLOC_SETS, ColocSpec, load_coloc_data

SCALES = (0.25, 1 / 3, 0.4, 0.5, 0.6, 0.8, 0.95)
SHIFT_PX = 10.0


def class_images(
    data: str,
    digit: int,
    source: str = "mnist",
    data_dir: Path | None = None,
    num_images: int = 100,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """The images ``[N, 1, S, S]`` and true boxes ``[N, 4]`` a co-localisation run of this class sees
    (``offset=100``: the tuning draw)."""
    spec = ColocSpec(
        data=data,
        digit=digit,
        seed=1,
        batch_size=2,
        profile="landscape",
        reduced_budget=True,
        num_images=num_images,
        image_offset=offset,
        data_source=source,
        data_dir=data_dir,
    )
    loaded = load_coloc_data(spec)
    images = loaded.images if loaded.images.dim() == 4 else loaded.images.unsqueeze(1)
    return images, loaded.boxes


def landscape(
    embeddings: dict[str, nn.Module],
    images: Tensor,
    boxes: Tensor,
    negatives: str = "crop",
    margin: float = 1.0,
) -> dict[str, dict[str, float]]:
    """The loss at each window (see the module docstring) under each embedding: ``{norm: {window: loss}}``;
    ``negatives`` and ``margin`` as configs/coloc.yaml's ``coloc.negatives`` and ``coloc.margin``."""
    true_scale = (boxes[:, 2] - boxes[:, 0]).mean().item() / COLOC_IMAGE_SIZE
    windows = {f"centred s={s:.2f}": box_centred_windows(boxes, s, COLOC_IMAGE_SIZE) for s in SCALES}
    windows[f"true size, {SHIFT_PX:g} px off"] = box_centred_windows(
        boxes, true_scale, COLOC_IMAGE_SIZE, shift_px=SHIFT_PX
    )
    image_centre = torch.full((len(boxes), 4), COLOC_IMAGE_SIZE / 2)  # a point box at the centre
    windows["true size, image centre"] = box_centred_windows(image_centre, true_scale, COLOC_IMAGE_SIZE)
    return {
        norm: hinge_at_windows(
            embedding, images, windows, crop_size=COLOC_OUTPUT_SIZE, negatives=negatives, margin=margin
        )
        for norm, embedding in embeddings.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--embedding", type=Path, required=True, help="a finished embedding run (folder or model.pt)"
    )
    parser.add_argument("--data", default="coloc_t", choices=sorted(COLOC_SETS))
    parser.add_argument("--digits", default="5", help="comma-separated digit classes")
    parser.add_argument("--norms", default="unit,per_layer,none", help=f"of {', '.join(EMBEDDING_NORMS)}")
    parser.add_argument("--source", default="mnist", choices=("mnist", "synthetic"))
    parser.add_argument(
        "--negatives",
        default="crop",
        choices=("crop", "window"),
        help="what I_n^rand is (configs/coloc.yaml)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="the hinge's margin (configs/coloc.yaml's coloc.margin); with unit-length e() a margin of 4 "
        "makes every pair count, the squared distances being at most 4",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="the data folder (default: STN_DATA or data/)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    digits = [int(d) for d in args.digits.split(",")]
    norms = args.norms.split(",")
    for norm in norms:
        if norm not in EMBEDDING_NORMS:
            parser.error(f"unknown --norms value {norm!r}; known: {', '.join(EMBEDDING_NORMS)}")
    embeddings = {norm: load_embedding(args.embedding, normalise=norm) for norm in norms}
    for digit in digits:
        images, boxes = class_images(args.data, digit, args.source, args.data_dir)
        rows = landscape(embeddings, images, boxes, args.negatives, args.margin)
        names = list(next(iter(rows.values())))
        print(
            f"\n{args.data} digit {digit}: mean hinge loss over all ordered pairs (lower = preferred), "
            f"negatives: {args.negatives}" + ("" if args.margin == 1.0 else f", margin {args.margin:g}")
        )
        print(f"| window | {' | '.join(norms)} |")
        print(f"|---|{'---|' * len(norms)}")
        for name in names:
            best = [rows[n][name] == min(rows[n].values()) for n in norms]
            cells = [
                f"**{rows[n][name]:.3g}**" if b else f"{rows[n][name]:.3g}"
                for n, b in zip(norms, best, strict=True)
            ]
            print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
