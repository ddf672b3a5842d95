"""How the co-localisation search leaves its start: short runs of several parameterisations, starts, learning
rates and optimisers on one class of the tuning draw (issue 46, step 3).

stn-coloc-search --data coloc_tc --digit 2 --steps 400 --variants free0.95_lr1e-2,free0.6_lr1e-2

Each variant trains a fresh transformer (seed 101) with the library's learner on the class's images 100-199
(the tuning draw: Table 5 scores 0-99) and e() = the Table 1 CNN given (unit length), and prints, four times
over the run, the found boxes' mean side (px; the true box is 28), the % localised (IoU > 0.5), the mean IoU
and the step's loss. A variant that stays near its start has not found the gradient the loss offers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from stn_analysis.diagnostics.coloc_landscape import class_images
from stn_analysis.diagnostics.coloc_surface import TUNING_OFFSET
from stn_repro.models.coloc import attention_boxes, box_iou, colocalisation_transformer
from stn_repro.tasks.coloc.embedding import load_embedding
from stn_repro.tasks.coloc.learner import ColocLearner
from stn_repro.training.settings import TrainSettings

BOUNDED = {"scale_range": (0.25, 1.0), "inside": True}
# name -> (transformer keywords, lr, optimiser, images per step[, negatives: crop unless given])
VARIANTS = {
    "bounded0.95_lr1e-3": ({"init_scale": 0.95, **BOUNDED}, 1e-3, "adam", 100),
    "bounded0.95_lr1e-2": ({"init_scale": 0.95, **BOUNDED}, 1e-2, "adam", 100),
    "free0.95_lr1e-2": ({"init_scale": 0.95}, 1e-2, "adam", 100),
    "free0.95_lr3e-3": ({"init_scale": 0.95}, 3e-3, "adam", 100),
    "free1.0_lr1e-2": ({"init_scale": 1.0}, 1e-2, "adam", 100),
    "free0.6_lr1e-2": ({"init_scale": 0.6}, 1e-2, "adam", 100),
    "free0.45_lr1e-2": ({"init_scale": 0.45}, 1e-2, "adam", 100),
    "free0.95_sgd_b16_lr1e-1": ({"init_scale": 0.95}, 1e-1, "sgd", 16),
    "free0.95_sgd_b16_lr1e-2": ({"init_scale": 0.95}, 1e-2, "sgd", 16),
    # I_n^rand a window of the transformer's own scale (coloc.negatives=window), not a 28 px crop
    "free0.95_lr1e-2_window": ({"init_scale": 0.95}, 1e-2, "adam", 100, "window"),
    "bounded0.95_lr1e-2_window": ({"init_scale": 0.95, **BOUNDED}, 1e-2, "adam", 100, "window"),
}
DEFAULT_EMBEDDING = Path("results/records/mnist_fast/p-cnn-none/seed1")


def search(
    embedding, images: torch.Tensor, boxes: torch.Tensor, variant: str, steps: int, seed: int = 101
) -> str:
    """One variant's line: the boxes four times over ``steps`` steps."""
    keywords, lr, optimizer, batch, *negatives = VARIANTS[variant]
    torch.manual_seed(seed)
    transformer = colocalisation_transformer(**keywords)
    settings = TrainSettings(
        iterations=steps, lr=lr, log_every=10, eval_every=0, checkpoint_every=0, momentum=0.9
    )
    learner = ColocLearner(
        transformer,
        embedding,
        images,
        settings,
        batch_size=min(batch, len(images)),
        seed=seed,
        optimizer=optimizer,
        negatives=negatives[0] if negatives else "crop",
    )
    x = images.float() / 255.0
    started, out = time.time(), []
    for step in range(1, steps + 1):
        loss = learner.step()
        if step % max(1, steps // 4) == 0:
            with torch.no_grad():
                found = attention_boxes(transformer.localisation(x))
            iou = box_iou(found, boxes)
            out.append(
                f"{step}: side {(found[:, 2] - found[:, 0]).mean():.0f} loc {100 * (iou > 0.5).float().mean():.0f}% "
                f"iou {iou.mean():.2f} loss {loss.item():.3f}"
            )
    return f"{variant} ({time.time() - started:.0f} s) " + " | ".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--embedding", type=Path, default=DEFAULT_EMBEDDING, help="a finished Table 1 CNN run"
    )
    parser.add_argument("--data", default="coloc_t", choices=("coloc_t", "coloc_tc"))
    parser.add_argument("--digit", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    embedding = load_embedding(args.embedding, normalise="unit")
    images, boxes = class_images(args.data, args.digit, "mnist", args.data_dir, offset=TUNING_OFFSET)
    for variant in variants:
        print(args.data, search(embedding, images, boxes, variant, args.steps), flush=True)


if __name__ == "__main__":
    main()
