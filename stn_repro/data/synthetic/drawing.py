"""Drawing pieces of the synthetic SVHN stand-in's house numbers (:mod:`.house_numbers` composes them):
the glyph bank (MNIST digits, Pillow's bundled font, seven-segment digits), layers of coverage with
their ink, the plate's projective geometry, colours and compositing.

The geometry is computed in Python floats (3 x 3 matrices as nested lists) and numpy's elementwise
arithmetic: no BLAS or LAPACK kernel, which may differ between CPUs, decides a picture's pixels.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from stn_repro.data.files import DataError

INK_THRESHOLD = 0.3
"""Coverage above which a glyph pixel is ink (the true ink boxes, as version 1's boxes)."""


_GLYPH_PX = 64  # drawn glyphs' size before they are scaled to a string's height


@dataclass
class GlyphBank:
    """The glyphs a tree's pictures are drawn from: MNIST digits cropped to their ink (uint8, with
    their labels 0-9) and, per drawn style, one glyph per digit 0-9."""

    mnist: list[np.ndarray]
    mnist_labels: np.ndarray
    drawn: dict[str, list[np.ndarray]]

    def drawn_sha256(self) -> str:
        """Checksum of the drawn glyphs (fonts and segments): another Pillow/FreeType may draw others."""
        digest = hashlib.sha256()
        for style in sorted(self.drawn):
            for glyph in self.drawn[style]:
                digest.update(repr((style, glyph.shape)).encode() + glyph.tobytes())
        return digest.hexdigest()


def glyph_bank(digits: np.ndarray, labels: np.ndarray) -> GlyphBank:
    """The :class:`GlyphBank` of MNIST-like ``digits [M, H, W]`` uint8 (0 = background) with ``labels [M]``."""
    drawn = {"sans": _font_glyphs(0), "sans_bold": _font_glyphs(3), "segment": _segment_glyphs()}
    return GlyphBank(tight_glyphs(digits), np.asarray(labels, dtype=np.int64), drawn)


def tight_glyphs(digits: np.ndarray) -> list[np.ndarray]:
    """Each digit cropped to its ink (pixels above 1/8 of full scale); a blank digit stays whole."""
    ink = digits > 32
    rows, cols = ink.any(2), ink.any(1)  # [M, H], [M, W]
    height, width = digits.shape[1:]
    top, bottom = rows.argmax(1), height - rows[:, ::-1].argmax(1)
    left, right = cols.argmax(1), width - cols[:, ::-1].argmax(1)
    blank = ~rows.any(1)
    top[blank], bottom[blank], left[blank], right[blank] = 0, height, 0, width
    return [digit[t:b, l:r] for digit, t, b, l, r in zip(digits, top, bottom, left, right, strict=True)]


def _crop_to_ink(glyph: np.ndarray) -> np.ndarray:
    return tight_glyphs(glyph[None])[0]


def _font_glyphs(stroke: int) -> list[np.ndarray]:
    """Digits 0-9 in Pillow's bundled font (Aileron Regular) at 64 px, thickened by ``stroke`` px."""
    if not features.check("freetype2"):
        raise DataError(
            "the synthetic SVHN stand-in draws digits with Pillow's bundled font, which needs Pillow "
            "built with FreeType; fix: install Pillow from its PyPI wheels (`pip install --force-reinstall pillow`)"
        )
    font = ImageFont.load_default(size=_GLYPH_PX)
    glyphs = []
    for digit in "0123456789":
        canvas = Image.new("L", (2 * _GLYPH_PX, 2 * _GLYPH_PX), 0)
        ImageDraw.Draw(canvas).text(
            (_GLYPH_PX // 3, _GLYPH_PX // 4), digit, font=font, fill=255, stroke_width=stroke, stroke_fill=255
        )
        glyphs.append(_crop_to_ink(np.asarray(canvas)))
    return glyphs


# Seven segments a-g on a 5 x 9 grid: (x0, y0, x1, y1) of each segment's centre line.
_SEGMENTS = {
    "a": (0.5, 0.5, 4.5, 0.5),
    "b": (4.5, 0.5, 4.5, 4.5),
    "c": (4.5, 4.5, 4.5, 8.5),
    "d": (0.5, 8.5, 4.5, 8.5),
    "e": (0.5, 4.5, 0.5, 8.5),
    "f": (0.5, 0.5, 0.5, 4.5),
    "g": (0.5, 4.5, 4.5, 4.5),
}
_SEGMENT_DIGITS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")


def _segment_glyphs() -> list[np.ndarray]:
    """Digits 0-9 as seven-segment displays (bevelled segments), 64 px high."""
    unit, thick, gap = _GLYPH_PX / 9, _GLYPH_PX / 9 * 0.9, _GLYPH_PX / 9 * 0.12
    half = thick / 2
    glyphs = []
    for segments in _SEGMENT_DIGITS:
        canvas = Image.new("L", (round(5 * unit) + 4, _GLYPH_PX + 4), 0)
        draw = ImageDraw.Draw(canvas)
        for name in segments:
            x0, y0, x1, y1 = (v * unit + 2 for v in _SEGMENTS[name])
            if y0 == y1:  # horizontal: a hexagon with pointed ends
                a, b = x0 + gap, x1 - gap
                points = [
                    (a, y0),
                    (a + half, y0 - half),
                    (b - half, y0 - half),
                    (b, y0),
                    (b - half, y0 + half),
                ]
                points.append((a + half, y0 + half))
            else:
                a, b = y0 + gap, y1 - gap
                points = [
                    (x0, a),
                    (x0 + half, a + half),
                    (x0 + half, b - half),
                    (x0, b),
                    (x0 - half, b - half),
                ]
                points.append((x0 - half, a + half))
            draw.polygon(points, fill=255)
        glyphs.append(_crop_to_ink(np.asarray(canvas)))
    return glyphs


@dataclass
class Layer:
    alpha: np.ndarray  # uint8 coverage, its pixel (0, 0) at plate position (x, y)
    x: float
    y: float


def ink_extent(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` (exclusive) of the ink; the whole layer where it has none."""
    ink = alpha > INK_THRESHOLD * 255
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if len(rows) == 0:
        return 0, 0, alpha.shape[1], alpha.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def layer_ink(layer: Layer) -> tuple[float, float, float, float]:
    l, t, r, b = ink_extent(layer.alpha)
    return layer.x + l, layer.y + t, layer.x + r, layer.y + b


def layer_corners(layer: Layer, ink_only: bool = False) -> np.ndarray:
    if ink_only:
        l, t, r, b = layer_ink(layer)
    else:
        l, t = layer.x, layer.y
        r, b = l + layer.alpha.shape[1], t + layer.alpha.shape[0]
    return np.array([[l, t], [r, t], [r, b], [l, b]], dtype=np.float64)


# 3 x 3 matrices as nested lists of Python floats (module docstring).
Matrix = list[list[float]]


def matmul(a: Matrix, b: Matrix) -> Matrix:
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def inverse(m: Matrix) -> Matrix:
    """The inverse of a 3 x 3 matrix (adjugate over determinant)."""
    (a, b, c), (d, e, f), (g, h, i) = m
    adjugate = [
        [e * i - f * h, c * h - b * i, b * f - c * e],
        [f * g - d * i, a * i - c * g, c * d - a * f],
        [d * h - e * g, b * g - a * h, a * e - b * d],
    ]
    det = a * adjugate[0][0] + b * adjugate[1][0] + c * adjugate[2][0]
    return [[value / det for value in row] for row in adjugate]


def homography(source, target) -> Matrix:
    """The projective map (3 x 3, last entry 1) taking the four ``source`` points to the four ``target``
    points: the 8 x 8 linear system solved by Gaussian elimination with partial pivoting."""
    rows = []
    for (x, y), (u, v) in zip(source, target, strict=True):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v])
    for col in range(8):
        pivot = max(range(col, 8), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(8):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    solution = [rows[r][8] / rows[r][r] for r in range(8)]
    return [solution[0:3], solution[3:6], [*solution[6:8], 1.0]]


def apply_map(m: Matrix, points) -> np.ndarray:
    """``points [N, 2]`` mapped through the projective map ``m``: ``[N, 2]``."""
    points = np.asarray(points, dtype=np.float64)
    x, y = points[:, 0], points[:, 1]
    w = m[2][0] * x + m[2][1] * y + m[2][2]
    return np.stack([(m[0][0] * x + m[0][1] * y + m[0][2]) / w, (m[1][0] * x + m[1][1] * y + m[1][2]) / w], 1)


def warp_layer(layer: Layer, warp: Matrix, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """``layer`` mapped through ``warp`` (plate -> picture): float coverage in [0, 1] over the picture's
    pixels its warped box covers, with that region's top-left pixel ``(x, y)``."""
    quad = apply_map(warp, layer_corners(layer))
    x0, y0 = max(0, math.floor(quad[:, 0].min())), max(0, math.floor(quad[:, 1].min()))
    x1, y1 = min(width, math.ceil(quad[:, 0].max())), min(height, math.ceil(quad[:, 1].max()))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), dtype=np.float32), 0, 0
    # Region pixel -> picture -> plate -> layer pixel: PIL takes the inverse map.
    to_layer = matmul([[1.0, 0.0, -layer.x], [0.0, 1.0, -layer.y], [0.0, 0.0, 1.0]], inverse(warp))
    to_layer = matmul(to_layer, [[1.0, 0.0, float(x0)], [0.0, 1.0, float(y0)], [0.0, 0.0, 1.0]])
    coefficients = tuple(value / to_layer[2][2] for row in to_layer for value in row)[:8]
    out = Image.fromarray(layer.alpha).transform(
        (x1 - x0, y1 - y0), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    return np.asarray(out, dtype=np.float32) / 255.0, x0, y0


def warped_ink_box(alpha: np.ndarray, x: int, y: int) -> list[float]:
    l, t, r, b = ink_extent((alpha * 255).round().astype(np.uint8)) if alpha.size else (0, 0, 1, 1)
    return [x + l, y + t, r - l, b - t]


def muted_colour(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0, 1)
    return np.clip(grey + rng.uniform(0, 0.8) * (rng.uniform(0, 1, size=3) - grey), 0, 1)


def luminance(colour: np.ndarray) -> float:
    return 0.299 * float(colour[0]) + 0.587 * float(colour[1]) + 0.114 * float(colour[2])


def upsample(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of ``small [h, w, C]`` to ``[height, width, C]`` (corners aligned)."""
    h, w = small.shape[:2]
    ys, xs = np.linspace(0, h - 1, height), np.linspace(0, w - 1, width)
    y0, x0 = np.minimum(ys.astype(int), h - 2), np.minimum(xs.astype(int), w - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    rows = small[:, x0] * (1 - fx) + small[:, x0 + 1] * fx  # [h, width, C]: along x first
    return rows[y0] * (1 - fy) + rows[y0 + 1] * fy


def composite(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, x: int, y: int) -> None:
    """Blend ``colour`` into ``canvas`` with ``alpha`` placed at ``(x, y)`` (clipped to the canvas)."""
    h, w = canvas.shape[:2]
    y0, x0 = max(0, y), max(0, x)
    y1, x1 = min(h, y + alpha.shape[0]), min(w, x + alpha.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + colour * a
