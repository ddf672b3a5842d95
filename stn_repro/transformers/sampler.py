"""The sampler: reads the input at the grid's source coordinates (Sect. 3.3 of the paper).

**Convention**: ``input [B, C, H_in, W_in]``, ``grid [B, H_out, W_out, 2]`` in normalised (x, y) order as
produced by a family's ``grid``; returns ``[B, C, H_out, W_out]``. Every channel is warped identically.
``align_corners`` must match the one the grid was made with (the suite uses :data:`.grids.ALIGN_CORNERS`).

Out-of-range samples read ``fill`` (zero by default: black background) with ``padding_mode="zeros"``, or
the nearest border pixel with ``padding_mode="border"``. Pad with the *background* value: if the input was
mean/std normalised before sampling, pass the normalised background as ``fill``, or the localisation net
learns to zoom out into a padding that no longer looks like background (spec Sect. 1, pitfall).

Identity parameters give the identity grid bit for bit, and sampling it reproduces the input up to the
rounding of ``grid_sample``'s own index arithmetic: it re-derives pixel indices from normalised coordinates
in the input's dtype, an error of about ``side * eps`` pixels (float32: 3e-6 at 42 px; float64: < 1e-12).
PyTorch's own ``affine_grid`` identity behaves the same. A convention bug (a half-pixel shift) shows as an
error of order 0.1, which the tests would catch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .grids import ALIGN_CORNERS

MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border")


def sample(
    input: Tensor,
    grid: Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    fill: float = 0.0,
    align_corners: bool = ALIGN_CORNERS,
) -> Tensor:
    """Bilinear (or nearest) sampling of ``input`` at ``grid``; differentiable in both (bilinear)."""
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; known: {', '.join(MODES)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding mode {padding_mode!r}; known: {', '.join(PADDING_MODES)}")
    if input.dim() != 4:
        raise ValueError(f"input must be [B, C, H, W], got {tuple(input.shape)}")
    if grid.dim() != 4 or grid.shape[-1] != 2 or grid.shape[0] != input.shape[0]:
        raise ValueError(
            f"grid must be [B, H_out, W_out, 2] with B={input.shape[0]} (the input's batch), got {tuple(grid.shape)}"
        )
    if grid.dtype != input.dtype:
        grid = grid.to(input.dtype)
    if fill and padding_mode == "zeros":
        return F.grid_sample(input - fill, grid, mode, "zeros", align_corners) + fill
    return F.grid_sample(input, grid, mode, padding_mode, align_corners)
