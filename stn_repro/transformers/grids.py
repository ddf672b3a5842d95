"""Normalised coordinate grids shared by every transform family, the sampler and the data generators.

**Convention** (the whole suite uses it):

- Coordinates are normalised so that the image spans [-1, 1] in x (width) and in y (height).
- Axis order is (x, y), as in ``torch.nn.functional.grid_sample``: ``grid[..., 0]`` is x (columns,
  left to right), ``grid[..., 1]`` is y (rows, top to bottom).
- ``align_corners=False`` (the suite's default, :data:`ALIGN_CORNERS`): -1 and +1 are the outer *edges*
  of the border pixels, so pixel ``i`` of ``n`` has its centre at ``(2 i + 1) / n - 1``. With
  ``align_corners=True``, -1 and +1 are the *centres* of the border pixels: ``2 i / (n - 1) - 1``.
  The suite picks ``False`` because a normalised length then measures the same fraction of the image at
  every resolution: a 28 px digit placed in a 42 px canvas spans exactly 28/42 of it, and a 224 px crop of
  a 448 px image is exactly half of it. The original Torch code used the ``True`` convention.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

ALIGN_CORNERS = False
"""The suite-wide choice of ``align_corners`` (see the module docstring for the reason)."""


def pixel_centres(n: int, align_corners: bool = ALIGN_CORNERS, *, dtype=torch.float32, device=None) -> Tensor:
    """Normalised coordinates of the ``n`` pixel centres along one axis, shape ``[n]``.

    **Convention**: see the module docstring. Computed in float64 and rounded once, so every value is the
    float nearest to the exact centre.
    """
    if n < 1:
        raise ValueError(f"an axis needs at least one pixel, got n={n}")
    i = torch.arange(n, dtype=torch.float64, device=device)
    if align_corners:
        centres = torch.zeros_like(i) if n == 1 else 2.0 * i / (n - 1) - 1.0
    else:
        centres = (2.0 * i + 1.0) / n - 1.0
    return centres.to(dtype)


def base_grid(
    size: tuple[int, int], align_corners: bool = ALIGN_CORNERS, *, dtype=torch.float32, device=None
) -> Tensor:
    """The identity sampling grid of an ``H x W`` output, shape ``[H, W, 2]`` in (x, y) order.

    **Convention**: normalised coordinates, (x, y) axis order, ``grid[i, j] = (x_j, y_i)``.
    """
    height, width = _check_size(size)
    xs = pixel_centres(width, align_corners, dtype=dtype, device=device)
    ys = pixel_centres(height, align_corners, dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


@functools.lru_cache(maxsize=64)
def shared_base_grid(
    size: tuple[int, int], align_corners: bool, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """:func:`base_grid`, computed once per argument set and then shared: a training step needs the same
    identity grid every iteration, and building it costs about 17 operator dispatches (each a kernel launch
    on a GPU). **Never modify the result in place**; callers only read it.
    """
    with torch.inference_mode(False):  # a grid first made under inference_mode could not enter autograd later
        return base_grid(size, align_corners, dtype=dtype, device=device)


def pixels_to_normalised(length_px: Tensor | float, n: int, align_corners: bool = ALIGN_CORNERS):
    """Convert a *length* (a displacement, not a position) from pixels to normalised units on an ``n`` px axis."""
    return length_px * (2.0 / (n - 1) if align_corners else 2.0 / n)


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width
