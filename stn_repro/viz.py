"""Pictures of what the spatial transformer learned, in the manner of the paper's figures.

Each row shows an input with the transformer's sampling grid drawn on it (the image of the output frame
under the predicted target -> source map) beside the transformed output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from stn_repro.io import publish_atomically
from stn_repro.transformers import TransformFamily


def frame_lines(lines: int = 5, points_per_line: int = 33) -> Tensor:
    """Polylines of a ``lines x lines`` grid over the output frame [-1, 1]^2, ``[2 * lines, P, 2]`` (x, y)."""
    t = torch.linspace(-1.0, 1.0, points_per_line)
    levels = torch.linspace(-1.0, 1.0, lines)
    horizontal = torch.stack([t.expand(lines, -1), levels[:, None].expand(-1, points_per_line)], dim=-1)
    vertical = torch.stack([levels[:, None].expand(-1, points_per_line), t.expand(lines, -1)], dim=-1)
    return torch.cat([horizontal, vertical])


def normalised_to_pixels(points: Tensor, height: int, width: int, align_corners: bool) -> Tensor:
    """(x, y) normalised -> (column, row) pixel coordinates for plotting (pixel centres at integers)."""
    scale = torch.tensor([width, height], dtype=points.dtype)
    if align_corners:
        return (points + 1) / 2 * (scale - 1)
    return ((points + 1) * scale - 1) / 2


def transformation_figure(
    inputs: Tensor, outputs: Tensor, params: Tensor, family: TransformFamily, titles: list[str] | None = None
) -> plt.Figure:
    """Inputs ``[N, C, H, W]`` with their sampling grids, beside outputs ``[N, C, H', W']``, values in [0, 1]
    (three channels are drawn as RGB, anything else as the first channel in grey)."""
    inputs, outputs, params = inputs.detach().cpu(), outputs.detach().cpu(), params.detach().cpu().float()
    n = inputs.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    lines = frame_lines()
    source = family.transform_points(params, lines.reshape(-1, 2)).reshape(n, *lines.shape)
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(_displayable(inputs[i]), cmap="gray", vmin=0, vmax=1)
        h, w = inputs.shape[-2:]
        for line in normalised_to_pixels(source[i], h, w, family.align_corners):
            top.plot(line[:, 0].numpy(), line[:, 1].numpy(), color="tab:orange", linewidth=0.7)
        top.set_xlim(-0.5, w - 0.5)
        top.set_ylim(h - 0.5, -0.5)
        bottom.imshow(_displayable(outputs[i]), cmap="gray", vmin=0, vmax=1)
        if titles:
            top.set_title(titles[i], fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input + grid", fontsize=7)
    axes[1, 0].set_ylabel("transformed", fontsize=7)
    fig.tight_layout()
    return fig


def _displayable(image: Tensor):
    """``[C, H, W]`` -> what ``imshow`` draws: ``[H, W, 3]`` RGB for three channels, else ``[H, W]``."""
    if image.shape[0] == 3:
        return image.permute(1, 2, 0).clamp(0, 1).numpy()
    return image[0].numpy()


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> Path:
    """Save atomically as PNG and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        publish_atomically(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


GRID_COLOURS = ("tab:orange", "tab:cyan", "tab:pink", "tab:olive")


def parallel_transformation_figure(
    inputs: Tensor,
    views: list[tuple[Tensor, Tensor]],
    family: TransformFamily,
    titles: list[str] | None = None,
) -> plt.Figure:
    """Multi-channel inputs seen by one or more transformers (the paper's Table 4, right, for MNIST addition).

    ``inputs [N, C, H, W]`` in [0, 1]; ``views`` one ``(outputs [N, C, H', W'], params [N, P])`` per
    transformer, each warping every channel with one map. One row per input: each input channel with every
    transformer's sampling grid drawn on it (one colour per transformer), then each transformer's output,
    channel by channel. ``titles`` (one per input) label the rows.
    """
    inputs = inputs.detach().cpu()
    n, channels, h, w = inputs.shape
    lines = frame_lines()
    columns = channels * (1 + len(views))
    fig, axes = plt.subplots(n, columns, figsize=(1.3 * columns, 1.35 * n + 0.3), squeeze=False)
    for k, (_, params) in enumerate(views):
        params = params.detach().cpu().float()
        source = family.transform_points(params, lines.reshape(-1, 2)).reshape(n, *lines.shape)
        colour = GRID_COLOURS[k % len(GRID_COLOURS)]
        for i in range(n):
            for c in range(channels):
                for line in normalised_to_pixels(source[i], h, w, family.align_corners):
                    axes[i, c].plot(line[:, 0].numpy(), line[:, 1].numpy(), color=colour, linewidth=0.6)
    for i in range(n):
        for c in range(channels):
            axes[i, c].imshow(inputs[i, c].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, c].set_xlim(-0.5, w - 0.5)
            axes[i, c].set_ylim(h - 0.5, -0.5)
        for k, (outputs, _) in enumerate(views):
            outputs = outputs.detach().cpu()
            for c in range(channels):
                axes[i, channels * (1 + k) + c].imshow(outputs[i, c].numpy(), cmap="gray", vmin=0, vmax=1)
        if titles:
            axes[i, 0].set_ylabel(titles[i], fontsize=7)
    for c in range(channels):
        axes[0, c].set_title(f"input ch {c + 1}", fontsize=7)
        for k in range(len(views)):
            colour = GRID_COLOURS[k % len(GRID_COLOURS)]
            axes[0, channels * (1 + k) + c].set_title(f"ST{k + 1} ch {c + 1}", fontsize=7, color=colour)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
