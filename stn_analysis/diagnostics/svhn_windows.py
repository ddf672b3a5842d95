"""Where a finished SVHN ST-CNN run looks on the synthetic stand-in's test split, against the digits' true ink.

stn-svhn-windows runs/svhn/quick/synthetic-svhn64-st_cnn_multi/seed1 [more run folders ...]
stn-svhn-windows <runs ...> --out results/svhn_windows_quick_synthetic.md

The stand-in knows where every digit's ink is (``truth.json``, which the importer never reads). For each
test image the model's transformers, composed into one affine map (:func:`composed_affine`: for ST-CNN
Multi, the input region its four transformers together pass on), give a *window* on the input. Over the test
images: the window's size (its share of the input's area) and centre, how its centre and side follow the
ink's (Pearson r), how much of the ink it keeps and how much of it is ink, beside the identity window (the
whole input, what the CNN sees). Transformers that find the digits follow them (r near 1) and crop to them
(more of the window is ink than of the whole input, with the ink kept). Nothing is trained.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stn_analysis.diagnostics.run_report import run_report_main
from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.svhn.crops import center_crop
from stn_repro.data.svhn.digit_struct import DIGIT_STRUCT, read_digit_struct
from stn_repro.data.svhn.stored import load_svhn_set
from stn_repro.data.synthetic.svhn import ink_in_crop, read_truth
from stn_repro.models.svhn import composed_affine
from stn_repro.tasks.svhn import load_trained_svhn_model
from stn_repro.training.records import RECORD_NAME, read_record

GRID = 16  # points per side sampled in a box to measure overlaps


@dataclass(frozen=True)
class WindowPlacement:
    """Per test image (``N``): the composed window and the ink, in the input's normalised frame."""

    params: Tensor  # [N, 6] composed affine map (output frame -> input), align_corners=False
    ink: Tensor  # [N, 4] ink box (x0, y0, x1, y1), normalised input coordinates
    ink_kept: Tensor  # [N] share of the ink box inside the window
    window_ink: Tensor  # [N] share of the window that is ink
    whole_ink_kept: Tensor  # [N] the identity window's (the whole input's)
    whole_window_ink: Tensor  # [N]

    @property
    def area(self) -> Tensor:
        """The window's share of the input's area (``|det|`` of the linear part)."""
        p = self.params
        return (p[:, 0] * p[:, 4] - p[:, 1] * p[:, 3]).abs()

    @property
    def centres(self) -> Tensor:
        return self.params[:, [2, 5]]

    @property
    def ink_centres(self) -> Tensor:
        return (self.ink[:, :2] + self.ink[:, 2:]) / 2


def ink_boxes_in_inputs(tree: Path, names: list[str], size: int, crop: int | None) -> Tensor:
    """The union of each picture's true ink boxes in the model's input frame, ``[N, 4]`` as (x0, y0, x1,
    y1) normalised (``align_corners=False``: -1 and 1 are the outer edges of the input), for the test
    pictures ``names`` (in the stored set's order) of the stand-in's ``tree`` split folder, stored at ``size``
    px and centrally cropped to ``crop`` (``None``: the whole image)."""
    truth = {entry["name"]: entry for entry in read_truth(tree)}
    annotated = {image.name: image.boxes for image in read_digit_struct(tree / DIGIT_STRUCT)}
    missing = [name for name in names if name not in truth or name not in annotated]
    if missing:
        raise DataError(
            f"{tree} lacks {len(missing)} test pictures of the stored set (first {missing[0]}); "
            "fix: rerun `make data-svhn-synthetic`"
        )
    side = crop or size
    boxes = []
    for name in names:
        cx, cy, w, h = ink_in_crop(annotated[name], np.asarray(truth[name]["ink_boxes"]), size)
        # fractions of the stored image -> pixels of the central crop -> normalised
        x0, x1 = (cx - w / 2) * size - (size - side) / 2, (cx + w / 2) * size - (size - side) / 2
        y0, y1 = (cy - h / 2) * size - (size - side) / 2, (cy + h / 2) * size - (size - side) / 2
        boxes.append([2 * x0 / side - 1, 2 * y0 / side - 1, 2 * x1 / side - 1, 2 * y1 / side - 1])
    return torch.tensor(boxes, dtype=torch.float64)


def _box_points(boxes: Tensor) -> Tensor:
    """``GRID x GRID`` cell centres of each box ``[N, 4]``: ``[N, GRID * GRID, 2]``."""
    t = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    u, v = gx.reshape(1, -1), gy.reshape(1, -1)
    x = boxes[:, :1] + u * (boxes[:, 2:3] - boxes[:, :1])
    y = boxes[:, 1:2] + v * (boxes[:, 3:4] - boxes[:, 1:2])
    return torch.stack([x, y], dim=-1)


def _inside(points: Tensor, boxes: Tensor) -> Tensor:
    """Whether each point ``[N, P, 2]`` lies in its image's box ``[N, 4]``: ``[N, P]`` bool."""
    x, y = points[..., 0], points[..., 1]
    b = boxes.unsqueeze(1)
    return (x >= b[..., 0]) & (x <= b[..., 2]) & (y >= b[..., 1]) & (y <= b[..., 3])


def window_overlaps(params: Tensor, ink: Tensor) -> tuple[Tensor, Tensor]:
    """For windows ``params [N, 6]`` (output frame -> input, normalised) and ink boxes ``ink [N, 4]`` in
    the input frame: the share of each ink box inside its window and the share of each window that is ink,
    each ``[N]``, measured on ``GRID x GRID`` points (exact for boxes and windows aligned with the grid)."""
    theta = params.double().view(-1, 2, 3)
    linear, shift = theta[:, :, :2], theta[:, :, 2]
    # Ink points into the window's own frame: inside the window where both coordinates lie in [-1, 1].
    ink_points = _box_points(ink)
    own = torch.linalg.solve(linear.unsqueeze(1), (ink_points - shift.unsqueeze(1)).unsqueeze(-1)).squeeze(-1)
    kept = (own.abs() <= 1).all(-1).double().mean(1)
    # The window's points into the input frame: ink where they fall in the ink box.
    whole = torch.tensor([[-1.0, -1.0, 1.0, 1.0]], dtype=torch.float64).expand(len(params), 4)
    window_points = (linear.unsqueeze(1) @ _box_points(whole).unsqueeze(-1)).squeeze(-1) + shift.unsqueeze(1)
    window_ink = _inside(window_points, ink).double().mean(1)
    return kept, window_ink


@torch.no_grad()
def window_placement(
    model: torch.nn.Module, images: Tensor, ink: Tensor, batch_size: int = 200
) -> WindowPlacement:
    """Run ``model`` (an ST-CNN, eval mode) over ``images`` (uint8 ``[N, 3, S, S]``, its inputs) and place
    its composed window against ``ink`` (:func:`ink_boxes_in_inputs`)."""
    model.eval()
    params = []
    for start in range(0, len(images), batch_size):
        model(images[start : start + batch_size].float() / 255.0)
        params.append(composed_affine(model).double().cpu())
    params = torch.cat(params)
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64).expand_as(params)
    kept, window_ink = window_overlaps(params, ink)
    whole_kept, whole_ink = window_overlaps(identity, ink)
    return WindowPlacement(params, ink, kept, window_ink, whole_kept, whole_ink)


def _r(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) / denominator if denominator > 0 else float("nan")


def placement_markdown(record: dict, placement: WindowPlacement) -> str:
    centres, ink = placement.centres, placement.ink_centres
    side = placement.area.sqrt()
    ink_side = ((placement.ink[:, 2:] - placement.ink[:, :2]).prod(1) / 4).sqrt()
    pct = 100.0
    data = record["config"]["data"]
    lines = [
        f"## {record['cell']} seed {record['seed']}",
        "",
        f"{len(placement.params):,} test images, {data.get('crop') or data['size']} px inputs; sequence error "
        f"{record['test_error']:.2f}%; commit {record['commit'][:12]}, profile {record['profile']}"
        f"{', SYNTHETIC data' if record.get('synthetic') else ''}. Coordinates are normalised (-1 and 1: the "
        "input's edges); sides and areas are shares of the input's.",
        "",
        "| | window | the ink |",
        "|---|---|---|",
        f"| centre x: mean, spread | {centres[:, 0].mean():+.3f}, {centres[:, 0].std():.3f} | "
        f"{ink[:, 0].mean():+.3f}, {ink[:, 0].std():.3f} |",
        f"| centre y: mean, spread | {centres[:, 1].mean():+.3f}, {centres[:, 1].std():.3f} | "
        f"{ink[:, 1].mean():+.3f}, {ink[:, 1].std():.3f} |",
        f"| side (sqrt of the area share): mean, spread | {side.mean():.3f}, {side.std():.3f} | "
        f"{ink_side.mean():.3f}, {ink_side.std():.3f} |",
        "",
        f"How the window follows the ink: r(centre x) {_r(centres[:, 0], ink[:, 0]):+.2f}, r(centre y) "
        f"{_r(centres[:, 1], ink[:, 1]):+.2f}, r(side) {_r(side, ink_side):+.2f}.",
        "",
        "| window | ink kept | window that is ink |",
        "|---|---|---|",
        f"| learned | {pct * placement.ink_kept.mean():.1f}% | {pct * placement.window_ink.mean():.1f}% |",
        f"| identity (the whole input, as the CNN) | {pct * placement.whole_ink_kept.mean():.1f}% | "
        f"{pct * placement.whole_window_ink.mean():.1f}% |",
        "",
    ]
    return "\n".join(lines)


def describe(run_dir: Path, data_dir: Path | None = None) -> str:
    record = read_record(run_dir / RECORD_NAME)
    if record.get("experiment") != "svhn" or not record.get("transform"):
        raise ValueError(f"{run_dir} is not an SVHN ST-CNN run (its record has no transform)")
    if not record.get("synthetic"):
        raise ValueError(f"{run_dir} ran on real SVHN, whose true ink is unknown: only stand-in runs qualify")
    config = record["config"]
    size, crop = config["data"]["size"], config["data"].get("crop")
    test = load_svhn_set(config["data"]["set_name"], size, "test", data_dir)
    names = [bytes(name).decode() for name in test["names"]]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    ink = ink_boxes_in_inputs(root / "synthetic-svhn" / "test", names, size, crop)
    images = center_crop(test["images"], crop)
    return placement_markdown(record, window_placement(load_trained_svhn_model(run_dir), images, ink))


def main(argv: list[str] | None = None) -> int:
    return run_report_main(
        argv,
        __doc__,
        "stn-svhn-windows",
        "Where the SVHN ST-CNNs look, against the digits' true ink (synthetic stand-in)",
        describe,
    )


if __name__ == "__main__":
    sys.exit(main())
