"""The Goodfellow et al. (2013) crops of SVHN: the digits' union box grown and squared, resized, and the
labels encoded as five positions.

**Convention**: pixel ``(i, j)`` (row, column) covers ``[j, j + 1) x [i, i + 1)``, so a box covers the columns
``left .. left + width - 1`` (0-based, as the common Python readers take them: the SVHN documentation does
not say; a 1-based reading would move every crop by one source pixel). Stored labels are the digits
themselves (0-9) and :data:`NO_DIGIT` (10) for an empty position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from PIL import Image
from torch import Tensor

MAX_DIGITS = 5
"""Positions per image; images with more digits are dropped (and counted), as Goodfellow et al. did."""


NO_DIGIT = 10
"""Label of an empty position (after the last digit); classes 0-9 are the digits."""


CROP_SCALE: dict[int, Fraction] = {64: Fraction(13, 10), 128: Fraction(13, 5)}
"""Side of the crop box over the side of the digits' union box, per stored image size. 64: Goodfellow's
30% expansion. 128: the 64 px box grown to twice its width and height about its centre (a choice; the
paper only says "more loosely"), so the digits have the same size in pixels in both sets and the 128 px
images show four times the area, the extra being background."""


def crop_box(boxes: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """The pixel box ``(x0, y0, x1, y1)`` (``x1``, ``y1`` exclusive) cropped for the ``size`` px set.

    Goodfellow et al. (2013): the union of the digit boxes, expanded about its centre by
    :data:`CROP_SCALE` (1.3: "30% in x and y" for 64 px; 2.6 for 128 px, see there). The edges are
    rounded to whole pixels, halves up (computed exactly, with fractions); the box keeps at least one
    pixel. It may extend beyond the image (see :func:`crop_and_resize`).
    """
    if size not in CROP_SCALE:
        raise ValueError(f"no crop recipe for {size} px; known sizes: {', '.join(map(str, CROP_SCALE))}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = min(Fraction(v) for v in boxes[:, 0])
    y0 = min(Fraction(v) for v in boxes[:, 1])
    x1 = max(Fraction(l) + Fraction(w) for l, w in zip(boxes[:, 0], boxes[:, 2], strict=True))
    y1 = max(Fraction(t) + Fraction(h) for t, h in zip(boxes[:, 1], boxes[:, 3], strict=True))
    scale = CROP_SCALE[size]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = scale * (x1 - x0) / 2, scale * (y1 - y0) / 2
    left, right = math.floor(cx - half_w + Fraction(1, 2)), math.floor(cx + half_w + Fraction(1, 2))
    top, bottom = math.floor(cy - half_h + Fraction(1, 2)), math.floor(cy + half_h + Fraction(1, 2))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_and_resize(image: Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` px crop of an SVHN image: uint8 ``[3, size, size]``.

    Crops :func:`crop_box` (parts outside the image read black, zero: PIL's ``crop`` fills them so; no
    clamping or mirroring) and resizes to ``size x size`` with PIL's bilinear filter (antialiased when
    shrinking), not preserving the aspect ratio, as Goodfellow et al.
    """
    box = crop_box(boxes, size)
    crop = (image if image.mode == "RGB" else image.convert("RGB")).crop(box)
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)


def encode_labels(raw_labels: Sequence[int]) -> np.ndarray:
    """Raw SVHN labels (1-10, 10 = digit 0) as the stored int64 ``[5]``: digits 0-9 padded with
    :data:`NO_DIGIT`."""
    if not 1 <= len(raw_labels) <= MAX_DIGITS:
        raise ValueError(f"need 1-{MAX_DIGITS} labels, got {len(raw_labels)}")
    out = np.full(MAX_DIGITS, NO_DIGIT, dtype=np.int64)
    out[: len(raw_labels)] = [label % 10 for label in raw_labels]
    return out


def center_crop(images: Tensor, crop: int | None) -> Tensor:
    """The central ``crop x crop`` window of ``images [..., S, S]`` (offset ``(S - crop) // 2``), for
    evaluating a model trained on :class:`SvhnStream`'s random crops; ``None`` returns ``images``."""
    if crop is None:
        return images
    size = images.shape[-1]
    if not 0 < crop <= min(images.shape[-2:]):
        raise ValueError(f"crop {crop} does not fit images of {tuple(images.shape[-2:])}")
    top, left = (images.shape[-2] - crop) // 2, (size - crop) // 2
    return images[..., top : top + crop, left : left + crop]
