"""Pictures of co-localisation: the boxes the transformer finds on its images, and how they moved."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from torch import Tensor

from stn_repro.io import atomic_write_text
from stn_repro.models.coloc import (
    box_iou,
)
from stn_repro.tasks.coloc.learner import (
    predicted_boxes,
)
from stn_repro.transformers import SpatialTransformer

# In the run's pictures/: the pictured images' found boxes at each picture step.
BOX_HISTORY_NAME = "boxes.json"


def update_box_history(path: Path, iteration: int, boxes: Tensor) -> list[tuple[int, Tensor]]:
    """Add ``boxes [N, 4]`` (pixel ``(x0, y0, x1, y1)``) found at ``iteration`` to the JSON list in ``path``
    and return the whole history, oldest first, as ``(iteration, boxes)``. Entries from ``iteration`` on are
    replaced: a run resumed from an earlier checkpoint draws those steps again."""
    path = Path(path)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if e["iteration"] < iteration]
    entries.append({"iteration": int(iteration), "boxes": boxes.detach().cpu().float().tolist()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entries) + "\n")
    return [(e["iteration"], torch.tensor(e["boxes"])) for e in entries]


def boxes_picture(
    transformer: SpatialTransformer,
    images: Tensor,
    true_boxes: Tensor,
    box_history: Path | None = None,
    iteration: int = 0,
):
    """The images with the predicted box (orange) and the true box (red), each image's crop below, and,
    with ``box_history``, the boxes found at every picture step so far, this one (``iteration``) added to
    the file (:func:`update_box_history`): the paper's Table 5 (right), one figure per picture step."""
    pred = predicted_boxes(transformer, images)
    history = None if box_history is None else update_box_history(box_history, iteration, pred)
    was_training = transformer.training
    transformer.eval()
    with torch.no_grad():
        outputs = transformer(images.float() / 255.0 if images.dtype == torch.uint8 else images)
    transformer.train(was_training)
    return boxes_figure(images, pred, true_boxes, outputs, history)


def _draw_box(ax, box: Tensor, colour, width: float) -> None:
    # imshow puts pixel i's centre at i: the continuous pixel position x sits at x - 0.5.
    x0, y0, x1, y1 = box.tolist()
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, linewidth=width))


def boxes_figure(
    images: Tensor,
    pred_boxes: Tensor,
    true_boxes: Tensor,
    outputs: Tensor | None = None,
    history: list[tuple[int, Tensor]] | None = None,
):
    """``images [N, 1, S, S]`` with ``pred_boxes`` (orange) and ``true_boxes`` (red) drawn, IoU as titles;
    ``outputs [N, 1, s, s]`` (the transformer's crops), if given, in a second row; ``history`` (``(iteration,
    boxes [N, 4])``, oldest first), if given, in a last row: every step's box, dark (early) to light (late)."""
    images = images.detach().cpu()
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    pred_boxes, true_boxes = pred_boxes.detach().cpu().float(), true_boxes.detach().cpu().float()
    iou = box_iou(pred_boxes, true_boxes)
    n = images.shape[0]
    rows = 1 + (outputs is not None) + bool(history)
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.8 * rows), squeeze=False)
    size = images.shape[-1]
    image_rows = [0] + ([rows - 1] if history else [])
    for i in range(n):
        for row in image_rows:
            axes[row, i].imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, i].set_xlim(-2.5, size + 1.5)  # a little margin: a whole-image box stays visible
            axes[row, i].set_ylim(size + 1.5, -2.5)
        _draw_box(axes[0, i], true_boxes[i], "tab:red", 0.8)
        _draw_box(axes[0, i], pred_boxes[i], "tab:orange", 1.2)
        axes[0, i].set_title(f"IoU {iou[i]:.2f}", fontsize=7, color="black" if iou[i] > 0.5 else "tab:red")
        if outputs is not None:
            axes[1, i].imshow(outputs[i, 0].detach().cpu().float().numpy(), cmap="gray", vmin=0, vmax=1)
        if history:
            _draw_box(axes[-1, i], true_boxes[i], "tab:red", 0.8)
            for k, (_, boxes) in enumerate(history):
                colour = plt.cm.viridis(k / max(len(history) - 1, 1))
                _draw_box(axes[-1, i], boxes[i], colour, 0.9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("true (red), found (orange)", fontsize=6)
    if outputs is not None:
        axes[1, 0].set_ylabel("transformer output", fontsize=6)
    if history:
        first, last = history[0][0], history[-1][0]
        axes[-1, 0].set_ylabel(f"found at it. {first:,}-{last:,}\n(dark to light)", fontsize=6)
    fig.tight_layout()
    return fig
