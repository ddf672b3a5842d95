"""Distorted MNIST generators (spec Sect. 2-4), built on the transformer library's own geometry.

**Convention** (every function here):

- ``digits``: float32 ``[B, 1, 28, 28]`` in [0, 1] (uint8 / 255), black background, on any device.
- Every random number is drawn from the CPU ``torch.Generator`` passed in, in a fixed order, so the same
  generator state gives the same parameters on CPU and GPU; the parameters then move to the digits' device,
  where the warp runs. Returned images are on the digits' device; returned parameters are CPU tensors,
  one row per sample.
- Warps use :mod:`stn_repro.transformers` (target -> source maps, normalised (x, y) coordinates,
  ``align_corners=False``): the data and the models share one implementation of the geometry.
- Pixel positions (``centre_px``, ``clutter_xy_px``, boxes) are continuous image coordinates in pixels,
  x right and y down, with the image spanning ``[0, S]``: pixel ``i`` covers ``[i, i + 1]`` and has its
  centre at ``i + 0.5``. This is the pixel picture of ``align_corners=False``, so a position ``x_px``
  is the normalised ``-1 + 2 x_px / S``. Lengths in pixels (offsets, sizes) are those of the output image.
- Angles are in degrees, positive = counter-clockwise as displayed.
- Images are quantised to 8-bit levels, ``round(x * 255) / 255``, so that stored (uint8) sets and
  on-the-fly training batches come from exactly the same distribution.
- The warp runs in the digits' dtype; the parameters (float32) do not depend on it. The stored sets pass
  float64 digits so that their pixels do not depend on the CPU's matrix kernels (see
  :data:`stn_repro.data.sets.STORED_SET_DTYPE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from stn_repro.transformers import (
    base_grid,
    get_transform,
    pixels_to_normalised,
    projective_from_points,
    sample,
    similarity_to_affine,
    tps_control_points,
)

SET_NAMES = ("r", "rts", "p", "e", "tc")
"""The paper's sets (Table 1 and the 60x60 cluttered column)."""
VARIANT_SETS = {"p_4px": "p", "p_diagonal": "p", "p_digit_frame": "p"}
"""Study sets, not the paper's: a paper set's recipe with one thing changed, to test an explanation of a
gap to the paper by training (name -> the set it varies). Their records never fill a Table 1 cell.

- ``p_4px``: P with N(0, 4 px) corner offsets instead of the spec's 5 px (results/mnist_p_error_by_offset.md).
- ``p_diagonal``: another reading of the paper's "move each corner by N(0, 5 px)": one N(0, 5 px) stretch
  per corner along its diagonal (outwards for a positive draw), so the rms corner displacement is 5 px
  instead of the spec reading's 7.07 px (two independent N(0, 5 px) components).
- ``p_digit_frame``: the spec reading's N(0, 5 px) offsets in x and y, in the digit's own pixels, added after
  the scaling (not divided by the scale): the sampled corners are ``corner / scale + offset``, displaced
  ``5 / scale`` times less than ``(corner + offset) / scale`` in the digit's frame.
"""
DISTORTED_SET_NAMES = (*SET_NAMES, *VARIANT_SETS)
"""Every set :func:`distort` makes and ``make data-mnist`` stores."""
IMAGE_SIZE = {
    "r": 28,
    "rts": 42,
    "p": 28,
    "e": 28,
    "tc": 60,
    "p_4px": 28,
    "p_diagonal": 28,
    "p_digit_frame": 28,
}
"""Output side in pixels of each set (spec Sect. 2; R, P and E keep MNIST's 28 px [choice])."""

DIGIT_SIZE = 28
ADDITION_SIZE = 42  # each channel of an addition pair is an RTS image (spec Sect. 3)
NUM_ADDITION_CLASSES = 19  # sums 0..18
COLOC_SIZE = 84  # spec Sect. 4
CLUTTER_PATCH_SIZE = 6
TC_NUM_CLUTTER = 6
COLOC_NUM_CLUTTER = 16

# The spec's ranges, one place for the generators and the tests.
R_MAX_ANGLE_DEG = 90.0
RTS_MAX_ANGLE_DEG = 45.0
RTS_SCALE_RANGE = (0.7, 1.2)
P_SCALE_RANGE = (0.75, 1.0)
P_CORNER_STD_PX = 5.0
P_4PX_CORNER_STD_PX = 4.0  # the study set p_4px (VARIANT_SETS)
E_SCALE_RANGE = (0.75, 1.0)
E_CONTROL_STD_PX = 1.5

_AFFINE = get_transform("affine")
_PROJECTIVE = get_transform("projective")
_TPS = get_transform("tps", grid_size=4)  # the paper's 16 control points; the family caches its grid map
# Image corners (the outer edges, +-1 under align_corners=False) in the order top-left, top-right,
# bottom-right, bottom-left: a closed, counter-clockwise-in-array-coordinates loop.
_CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
_DIAGONALS = _CORNERS / math.sqrt(2.0)  # each corner's unit direction away from the centre


def quantise(images: Tensor) -> Tensor:
    """Round ``[0, 1]`` images to the 256 levels of uint8, ``round(x * 255) / 255``, clamping first."""
    return images.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def distort(
    set_name: str, digits: Tensor, generator: torch.Generator, clutter_source: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Distort a batch of digits with the recipe of one set: ``r``, ``rts``, ``p``, ``e`` or ``tc``, or a
    study set of :data:`VARIANT_SETS` (``p_4px``, ``p_digit_frame``: return what ``p`` returns;
    ``p_diagonal`` adds ``corner_stretch_px [B, 4]``).

    **Convention**: see the module docstring. ``digits [B, 1, 28, 28]`` float in [0, 1];
    returns quantised images ``[B, 1, S, S]`` (``S = IMAGE_SIZE[set_name]``) on the digits' device and a
    dict of the true per-sample parameters (CPU):

    - ``r``: ``angle_deg [B]``, ``affine [B, 6]``
    - ``rts``: ``angle_deg [B]``, ``scale [B]``, ``centre_px [B, 2]``, ``affine [B, 6]``
    - ``p``: ``scale [B]``, ``corner_offsets_px [B, 4, 2]``, ``projective [B, 8]``; the output corners
      (top-left, top-right, bottom-right, bottom-left) sample the digit at ``(corner + offset) / scale``
      (``p_digit_frame``: at ``corner / scale + offset``; ``p_diagonal``: the offsets are
      ``corner_stretch_px`` times the corner's unit diagonal, pointing away from the centre)
    - ``e``: ``scale [B]``, ``control_offsets_px [B, 16, 2]``, ``tps [B, 32]``; the 4x4 control points
      sample the digit at ``(control + offset) / scale`` (offsets in output pixels, as for P)
    - ``tc``: ``centre_px [B, 2]``, ``clutter_xy_px [B, 6, 2]`` (top-left corner of each 6x6 patch),
      ``clutter_crop_xy_px [B, 6, 2]`` and ``clutter_index [B, 6]`` (where each patch came from),
      ``affine [B, 6]``

    ``affine``/``projective``/``tps`` are the family parameters (target -> source) that produced the image
    from the digit. ``clutter_source`` (uint8 or [0, 1] float ``[M, 28, 28]``, training digits) is
    required for ``tc``.
    """
    if set_name not in _RECIPES:
        raise ValueError(f"unknown distorted-MNIST set {set_name!r}; known: {', '.join(DISTORTED_SET_NAMES)}")
    _check_digits(digits)
    if set_name == "tc":
        if clutter_source is None:
            raise ValueError(
                "set 'tc' needs clutter_source: the training digits [M, 28, 28] its 6x6 clutter patches "
                "are cropped from"
            )
        return _translated_cluttered(digits, generator, clutter_source)
    return _RECIPES[set_name](digits, generator)


# One number per image for how strongly its set's recipe distorted it (what error_by_distortion bins by).
DISTORTION_SIZE = {
    "r": "absolute rotation (deg)",
    "rts": "absolute rotation (deg)",
    "p": "rms corner offset (px)",
    "e": "rms control-point offset (px)",
    "p_4px": "rms corner offset (px)",
    "p_diagonal": "rms corner offset (px)",
    "p_digit_frame": "rms corner offset (digit px)",
}


def distortion_size(set_name: str, params: dict[str, Tensor]) -> Tensor:
    """How strongly each image was distorted, ``[N]``, from the true parameters :func:`distort` returned (or
    a stored set holds): the absolute angle for ``r`` and ``rts``, the root mean square of the 8 corner
    (``p``) or 32 control-point (``e``) offsets in output pixels (each offset is N(0, sigma): the rms is
    about sigma, its spread chi with 8 or 32 degrees of freedom). ``tc`` only translates: no size."""
    if set_name not in DISTORTION_SIZE:
        raise ValueError(
            f"set {set_name!r} has no distortion size (known: {', '.join(DISTORTION_SIZE)}); tc only "
            "translates the digit"
        )
    if set_name in ("r", "rts"):
        return params["angle_deg"].abs().float()
    offsets = params["control_offsets_px" if set_name == "e" else "corner_offsets_px"].float()
    return offsets.pow(2).mean(dim=(1, 2)).sqrt()


# The sets whose images are their digit under one global target -> source map, and that map's family.
FRAME_WARPS = {
    "r": "affine",
    "rts": "affine",
    "p": "projective",
    "p_4px": "projective",
    "p_diagonal": "projective",
    "p_digit_frame": "projective",
}


def ink_in_frame(set_name: str, params: dict[str, Tensor], digits: Tensor) -> Tensor:
    """The share of each digit's ink that its distorted image keeps inside the frame, ``[N]`` in [0, 1] (1
    where the digit has no ink), for the sets of :data:`FRAME_WARPS`.

    **Convention**: ``digits [N, 1, 28, 28]`` in [0, 1] are the digits the images were made from, in order;
    ``params`` are the true parameters :func:`distort` returned (or a stored set holds). The output frame's
    corners (+-1, ``align_corners=False``) map through the image's target -> source warp onto a convex
    quadrilateral of the digit's frame (a parallelogram for ``r`` and ``rts``; ``p`` redraws folded corner
    sets); the ink of a digit pixel whose centre lies inside it is kept, the rest is off the frame.
    Bilinear sampling's half-pixel margin is ignored.
    """
    if set_name not in FRAME_WARPS:
        raise ValueError(
            f"set {set_name!r} has no single frame warp (known: {', '.join(FRAME_WARPS)}); e is a local "
            "(TPS) warp and tc pastes the whole digit"
        )
    _check_digits(digits)
    family = FRAME_WARPS[set_name]
    warp = params[family].to(torch.float64)
    if warp.shape[0] != digits.shape[0]:
        raise ValueError(f"{warp.shape[0]} parameter rows for {digits.shape[0]} digits")
    quad = get_transform(family).transform_points(warp, _CORNERS.to(torch.float64))  # [N, 4, 2]
    size = digits.shape[-1]
    points = base_grid((size, size), dtype=torch.float64).reshape(1, 1, -1, 2)  # the digit's pixel centres
    inside = torch.cat([_inside_convex(part, points) for part in quad.split(1024)])  # [N, P]
    ink = digits.reshape(digits.shape[0], -1).to(torch.float64).cpu()
    total = ink.sum(dim=1)
    kept = (ink * inside).sum(dim=1)
    return torch.where(total > 0, kept / total.clamp_min(1e-12), torch.ones_like(total)).float()


def _inside_convex(quad: Tensor, points: Tensor) -> Tensor:
    """Whether each of ``points [1, 1, P, 2]`` lies in each convex quadrilateral ``[B, 4, 2]``: ``[B, P]``."""
    edges = _quad_edges(quad).unsqueeze(2)  # [B, 4, 1, 2]
    sides = _cross(edges, points - quad.unsqueeze(2))  # [B, 4, P]: which side of each edge
    return (sides >= 0).all(dim=1) | (sides <= 0).all(dim=1)  # either loop orientation


def _rotated(digits: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    batch = digits.shape[0]
    angle_deg = _uniform(batch, -R_MAX_ANGLE_DEG, R_MAX_ANGLE_DEG, generator)
    # Rotation about the image centre at the digit's own size; the corners it turns out of the frame are
    # black in MNIST (digits sit in the central 20 x 20 box), so nothing is lost.
    theta = similarity_to_affine(
        _radians(angle_deg),
        torch.ones(batch, dtype=torch.float64),
        torch.zeros(batch, 2, dtype=torch.float64),
    ).float()
    images = _warp(digits, _AFFINE, theta, IMAGE_SIZE["r"])
    return quantise(images), {"angle_deg": angle_deg, "affine": theta}


def _rotated_translated_scaled(
    digits: Tensor, generator: torch.Generator
) -> tuple[Tensor, dict[str, Tensor]]:
    batch, canvas = digits.shape[0], IMAGE_SIZE["rts"]
    angle_deg = _uniform(batch, -RTS_MAX_ANGLE_DEG, RTS_MAX_ANGLE_DEG, generator)
    scale = _uniform(batch, *RTS_SCALE_RANGE, generator)
    # The centre is uniform over every position that keeps the scaled 28 s x 28 s digit box (before the
    # rotation) inside the canvas: the spec's "uniformly random location", with no digit cut off.
    half_px = 0.5 * DIGIT_SIZE * scale
    centre_px = half_px.unsqueeze(1) + torch.rand(batch, 2, generator=generator) * (
        canvas - 2 * half_px
    ).unsqueeze(1)
    theta = similarity_to_affine(
        _radians(angle_deg), scale.double() * DIGIT_SIZE / canvas, _position_to_normalised(centre_px, canvas)
    ).float()
    images = _warp(digits, _AFFINE, theta, canvas)
    return quantise(images), {"angle_deg": angle_deg, "scale": scale, "centre_px": centre_px, "affine": theta}


def _projective(
    digits: Tensor,
    generator: torch.Generator,
    corner_std_px: float = P_CORNER_STD_PX,
    along_diagonal: bool = False,
    in_digit_frame: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """P and its study readings (:data:`VARIANT_SETS`): ``along_diagonal`` draws one scalar per corner and
    moves the corner along its diagonal; ``in_digit_frame`` adds the offsets after the scaling."""
    batch, size = digits.shape[0], IMAGE_SIZE["p"]
    scale = _uniform(batch, *P_SCALE_RANGE, generator)
    # Scale first, then move the corners, the same construction as E: each output corner samples the
    # shrunk digit 5 px (output pixels, N(0, 5) in x and y) away from its own position, so the homography
    # maps the output's corners to the source points (corner + offset) / scale. Moving the sampling
    # positions (rather than pushing the digit's own corners outwards) keeps the digit in the frame: the
    # other way round, 12% of real digits lose more than half of their ink off the frame or to extreme
    # foreshortening (0.5% this way).
    draw_shape = (batch, 4) if along_diagonal else (batch, 4, 2)
    draws = torch.randn(*draw_shape, generator=generator) * corner_std_px

    def corners_of(draws: Tensor) -> Tensor:
        offsets_px = draws.unsqueeze(-1) * _DIAGONALS if along_diagonal else draws
        return _sampled_corners(scale, offsets_px, size, in_digit_frame)

    # A large draw can fold the quadrilateral (non-convex or self-crossing); no homography maps the square
    # onto it without sending part of the output through the horizon, which paints a mirrored ghost of the
    # digit. Such draws are redrawn, corners only, until every quadrilateral is convex: a slightly truncated
    # Gaussian: 0.3% of draws are redrawn, and the kept offsets' std is 4.99 px instead of 5.
    folded = ~_is_convex(corners_of(draws))
    while folded.any():
        draws[folded] = torch.randn(int(folded.sum()), *draw_shape[1:], generator=generator) * corner_std_px
        folded = ~_is_convex(corners_of(draws))
    offsets_px = draws.unsqueeze(-1) * _DIAGONALS if along_diagonal else draws
    homography = projective_from_points(
        _CORNERS.expand(batch, 4, 2), _sampled_corners(scale, offsets_px, size, in_digit_frame)
    )
    images = _warp(digits, _PROJECTIVE, homography, size)
    params = {"scale": scale, "corner_offsets_px": offsets_px, "projective": homography}
    if along_diagonal:
        params["corner_stretch_px"] = draws
    return quantise(images), params


def _sampled_corners(scale: Tensor, offsets_px: Tensor, size: int, in_digit_frame: bool = False) -> Tensor:
    """Source positions ``[B, 4, 2]`` (normalised) that the output's corners sample: moved, then scaled
    (``in_digit_frame``: scaled, then moved by the offsets in the digit's own pixels)."""
    offsets = pixels_to_normalised(offsets_px, size)
    if in_digit_frame:
        return _CORNERS / scale.view(-1, 1, 1) + offsets
    return (_CORNERS + offsets) / scale.view(-1, 1, 1)


def _is_convex(quad: Tensor) -> Tensor:
    """Whether each quadrilateral ``[B, 4, 2]`` is convex with the corner loop's orientation, ``[B]`` bool."""
    edges = _quad_edges(quad)
    return (_cross(edges, edges.roll(-1, dims=1)) > 0).all(dim=1)  # every turn the same way


def _quad_edges(quad: Tensor) -> Tensor:
    """The edge vectors ``[B, 4, 2]`` of the corner loops ``[B, 4, 2]``, corner ``i`` to corner ``i + 1``."""
    return quad.roll(-1, dims=1) - quad


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """The z component of the 2-D cross product of ``[..., 2]`` vectors: > 0 where ``b`` turns left of ``a``
    (counter-clockwise in x-right, y-up axes; clockwise on the image's y-down pixel grid)."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _elastic(digits: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    batch, size = digits.shape[0], IMAGE_SIZE["e"]
    scale = _uniform(batch, *E_SCALE_RANGE, generator)
    # Scale first, then perturb: each of the 16 target control points samples the shrunk digit 1.5 px
    # (output pixels) away from where it would, so the TPS source positions are (c + delta) / scale.
    offsets_px = torch.randn(batch, 16, 2, generator=generator) * E_CONTROL_STD_PX
    control = tps_control_points(4)
    params = ((control + pixels_to_normalised(offsets_px, size)) / scale.view(-1, 1, 1)).reshape(batch, -1)
    images = _warp(digits, _TPS, params, size)
    return quantise(images), {"scale": scale, "control_offsets_px": offsets_px, "tps": params}


def _translated_cluttered(
    digits: Tensor, generator: torch.Generator, clutter_source: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    canvas = IMAGE_SIZE["tc"]
    # Whole-pixel positions: the digit is copied unchanged (no resampling blur), as the spec only translates.
    images, top_left, theta = _place(digits, canvas, generator)
    clutter, clutter_params = _clutter(digits.shape[0], canvas, TC_NUM_CLUTTER, clutter_source, generator)
    # Combined with max, not pasted over: a patch's black background must not cut holes into the digit,
    # strokes that cross stay strokes, and values stay in [0, 1].
    images = torch.maximum(images, clutter.to(images.device))
    centre_px = top_left.float() + DIGIT_SIZE / 2
    return quantise(images), {"centre_px": centre_px, **clutter_params, "affine": theta}


def _place(digits: Tensor, canvas: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Put each digit, unscaled, at a uniformly random whole-pixel position inside a black canvas.

    Returns the images ``[B, 1, canvas, canvas]``, the digits' top-left corners ``[B, 2]`` (int64, px) and
    the affine params. At whole-pixel shifts every target pixel centre maps onto a source pixel centre, so
    the bilinear sampler copies the digit's pixels exactly (up to float rounding, which quantisation removes).
    """
    batch = digits.shape[0]
    top_left = torch.randint(0, canvas - DIGIT_SIZE + 1, (batch, 2), generator=generator)
    centre = _position_to_normalised(top_left.double() + DIGIT_SIZE / 2, canvas)
    theta = similarity_to_affine(
        torch.zeros(batch, dtype=torch.float64),
        torch.full((batch,), DIGIT_SIZE / canvas, dtype=torch.float64),
        centre,
    ).float()
    return _warp(digits, _AFFINE, theta, canvas), top_left, theta


def _clutter(
    batch: int, canvas: int, count: int, clutter_source: Tensor, generator: torch.Generator
) -> tuple[Tensor, dict[str, Tensor]]:
    """``count`` 6x6 crops of random training digits at random whole-pixel positions, ``[B, 1, canvas, canvas]``.

    Each patch is cropped at a uniformly random position of a uniformly random digit of ``clutter_source``
    (the spec's "other training digits": with ``M`` = 55k-60k source digits, a patch comes from the very
    digit it clutters with probability ``1/M``, and even then from a different place) and pasted at a
    uniformly random position wholly inside the canvas. Overlapping patches combine with max.
    Returned on ``clutter_source``'s device.
    """
    if clutter_source.dim() == 4 and clutter_source.shape[1] == 1:
        clutter_source = clutter_source[:, 0]
    if clutter_source.dim() != 3 or tuple(clutter_source.shape[1:]) != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"clutter_source must be [M, 28, 28] digits, got {tuple(clutter_source.shape)}")
    patch = CLUTTER_PATCH_SIZE
    index = torch.randint(0, clutter_source.shape[0], (batch, count), generator=generator)
    crop_xy = torch.randint(0, DIGIT_SIZE - patch + 1, (batch, count, 2), generator=generator)
    paste_xy = torch.randint(0, canvas - patch + 1, (batch, count, 2), generator=generator)
    device = clutter_source.device
    steps = torch.arange(patch)
    # non_blocking: a blocking host-to-GPU copy waits for every queued kernel (a stall per training batch).
    rows = (crop_xy[..., 1:] + steps).to(device, non_blocking=True)  # [B, count, 6]
    cols = (crop_xy[..., :1] + steps).to(device, non_blocking=True)
    on_device = index.to(device, non_blocking=True)
    patches = clutter_source[on_device[..., None, None], rows[..., :, None], cols[..., None, :]]
    patches = patches.float() / 255.0 if clutter_source.dtype == torch.uint8 else patches.float()
    # Paste all patches of all images in one scatter: flat canvas index of every patch pixel, max-reduced.
    flat = (paste_xy[..., 1:] + steps)[..., :, None] * canvas + (paste_xy[..., :1] + steps)[..., None, :]
    layer = torch.zeros(batch, canvas * canvas, device=device)
    flat = flat.to(device, non_blocking=True).reshape(batch, -1)
    layer.scatter_reduce_(1, flat, patches.reshape(batch, -1), reduce="amax")
    params = {
        "clutter_xy_px": paste_xy.float(),
        "clutter_crop_xy_px": crop_xy.float(),
        "clutter_index": index,
    }
    return layer.view(batch, 1, canvas, canvas), params


# --- MNIST addition and co-localisation (spec Sect. 3-4) ----------------------------------------------------


def addition_pairs(
    digits_a: Tensor, digits_b: Tensor, generator: torch.Generator
) -> tuple[Tensor, dict[str, Tensor]]:
    """Two-channel addition inputs: each channel an independent RTS distortion of one digit (spec Sect. 3).

    **Convention**: see the module docstring. ``digits_a, digits_b [B, 1, 28, 28]``; returns images
    ``[B, 2, 42, 42]`` (channel 0 from ``digits_a``) and the RTS parameters of both channels stacked on a
    new dim 1 (``angle_deg [B, 2]``, ``scale [B, 2]``, ``centre_px [B, 2, 2]``, ``affine [B, 2, 6]``).
    The label, the sum of the two digits' labels (``NUM_ADDITION_CLASSES`` = 19 classes), is the caller's
    to compute: the generator never sees labels.
    """
    _check_digits(digits_a)
    _check_digits(digits_b)
    if digits_a.shape != digits_b.shape:
        raise ValueError(
            f"addition needs equal batches, got {tuple(digits_a.shape)} and {tuple(digits_b.shape)}"
        )
    images_a, params_a = _rotated_translated_scaled(digits_a, generator)
    images_b, params_b = _rotated_translated_scaled(digits_b, generator)
    params = {key: torch.stack([params_a[key], params_b[key]], dim=1) for key in params_a}
    return torch.cat([images_a, images_b], dim=1), params


def colocalisation(
    digits: Tensor,
    generator: torch.Generator,
    clutter_source: Tensor | None = None,
    num_clutter: int = COLOC_NUM_CLUTTER,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Co-localisation images: a 28x28 digit at a random place in an 84x84 black image (spec Sect. 4).

    **Convention**: see the module docstring. Returns images ``[B, 1, 84, 84]``, the true boxes
    ``[B, 4]`` float as ``(x0, y0, x1, y1)`` pixel edges (the digit's whole 28x28 frame, the box the IoU
    metric compares with) and params (``top_left_px [B, 2]``, ``affine [B, 6]``; with clutter also the
    ``clutter_*`` entries of :func:`distort`'s ``tc``). With ``clutter_source`` (training digits
    ``[M, 28, 28]``) ``num_clutter`` 6x6 clutter patches are added, as in the paper's TC variant.
    """
    _check_digits(digits)
    images, top_left, theta = _place(digits, COLOC_SIZE, generator)
    params = {"top_left_px": top_left.float(), "affine": theta}
    if clutter_source is not None and num_clutter > 0:
        clutter, clutter_params = _clutter(
            digits.shape[0], COLOC_SIZE, num_clutter, clutter_source, generator
        )
        images = torch.maximum(images, clutter.to(images.device))
        params.update(clutter_params)
    boxes = torch.cat([top_left, top_left + DIGIT_SIZE], dim=1).float()
    return quantise(images), boxes, params


# --- helpers ------------------------------------------------------------------------------------------------


def _check_digits(digits: Tensor) -> None:
    if not isinstance(digits, Tensor) or digits.dim() != 4 or tuple(digits.shape[1:]) != (1, 28, 28):
        shape = tuple(digits.shape) if isinstance(digits, Tensor) else type(digits).__name__
        raise ValueError(f"digits must be a [B, 1, 28, 28] tensor, got {shape}")
    if not digits.is_floating_point():
        raise TypeError(
            f"digits must be float in [0, 1] (e.g. uint8_digits.float() / 255), got {digits.dtype}"
        )


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


def _radians(angle_deg: Tensor) -> Tensor:
    # float64 for the trigonometry; the float32 params it gives are then correctly rounded.
    return angle_deg.double() * (math.pi / 180.0)


def _position_to_normalised(position_px: Tensor, size: int) -> Tensor:
    """A *position* in pixels (image spanning ``[0, size]``) in normalised coordinates (``align_corners=False``)."""
    return -1.0 + pixels_to_normalised(position_px.double(), size)


def _warp(digits: Tensor, family, params: Tensor, size: int) -> Tensor:
    """Sample ``digits`` with ``family``'s grid for ``params`` (CPU) at ``size x size`` on the digits' device."""
    params = params.to(device=digits.device, dtype=digits.dtype, non_blocking=True)
    return sample(digits, family.grid(params, (size, size)))


_RECIPES: dict[str, Callable[[Tensor, torch.Generator], tuple[Tensor, dict[str, Tensor]]]] = {
    "r": _rotated,
    "rts": _rotated_translated_scaled,
    "p": _projective,
    "e": _elastic,
    "tc": _translated_cluttered,  # called with its clutter source by distort()
    "p_4px": partial(_projective, corner_std_px=P_4PX_CORNER_STD_PX),
    "p_diagonal": partial(_projective, along_diagonal=True),
    "p_digit_frame": partial(_projective, in_digit_frame=True),
}
