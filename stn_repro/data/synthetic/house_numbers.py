"""One house-number picture of the synthetic SVHN stand-in (version 2): a string of digits on a plate,
warped as a house front is seen, with loose human-like annotation boxes, neighbouring clutter and
backgrounds, so that the Goodfellow crop of its boxes does NOT centre the ink (as in real SVHN).

Where real SVHN crops get their spatial variation, and how this renderer makes it by construction:

- The annotated boxes are human-drawn: loose, sometimes cutting the ink, offset as a whole. Here each
  digit's box is its true ink box with every edge moved by its own draw, and the string's boxes shifted
  together, so the union-box crop is off-centre and of varying tightness.
- Strings are rotated, slanted and seen in perspective on house fronts: the whole plate (digits,
  neighbours, the plaque) goes through one homography, and the annotated boxes stay axis-aligned
  around the warped digits (looser for rotated ones).
- Neighbouring digits and edges of signs intrude: smaller digits or another line of digits beside the
  string (not annotated), a plaque's edge and bars (door frames) fall partly inside the crop.
- Tall single digits are stretched wide: the crop is resized without keeping its aspect (the importer's
  recipe, :mod:`stn_repro.data.svhn.crops`), as for real SVHN.

**Ranges** (chosen before any model was scored on version 2). Every continuous draw is uniform on its
range; every picture's draws are kept in the tree's ``truth.json``, named as here. ``h`` is the
string's digit height in pixels; "per digit" draws are made once per digit, "per image" once per
image. A digit's ink is where its warped glyph has coverage above 0.3 (:data:`~.drawing.INK_THRESHOLD`), as in
version 1, whose boxes were exactly that.

The string:

- ``num_digits`` 1, 2, 3, 4, 5 with probabilities 0.15, 0.4, 0.3, 0.1, 0.05 (as version 1).
- ``style`` mnist, sans, sans_bold, segment with probabilities 0.4, 0.2, 0.2, 0.2: one per string.
  mnist: a digit of the split's own MNIST digits; sans: Pillow's bundled font (Aileron Regular);
  sans_bold: the same thickened by a 3 px stroke; segment: a seven-segment display. The drawn styles
  take each digit 0-9 with probability 0.1.
- ``height_px`` 12 to 40: h, the string's digit height before the warp.
- ``digit_height_scale`` 0.92 to 1.08: per digit, its height over h.
- ``digit_aspect_scale`` 0.8 to 1.25: per digit, its width over the glyph's own aspect.
- ``digit_rotation_deg`` -5 to 5: per digit, its own rotation.
- ``digit_shift_y`` -0.08 to 0.08: per digit, its vertical offset (x h).
- ``spacing`` -0.05 to 0.6: per image, the gap between neighbouring digits' ink (x h).
- ``gap_jitter`` -0.05 to 0.05: per gap, added to the spacing (x h).

The plate's warp (digits, neighbours and plaque together):

- ``string_rotation_deg`` -15 to 15: per image, the rotation about the string's centre.
- ``string_shear`` -0.35 to 0.35: per image, the slant (x moves by shear x -y, before the rotation).
- ``perspective_offset`` -0.1 to 0.1: per corner coordinate of the string's ink box (8 per image), its
  further shift (x h): the warp is the homography through those four corners.

The annotation, and the picture's extent:

- ``box_edge_out`` -0.1 to 0.45: per edge of every annotated box (4 per digit: left, top, right,
  bottom), how far it lies outside the digit's warped ink box (x that ink box's height; negative cuts
  into the ink).
- ``box_offset`` -0.15 to 0.15: per image, x then y, the shift of all the string's boxes (x h). Box
  edges are then rounded to whole pixels and clipped to the picture (each box keeps at least 1 px).
- ``margin`` 0.25 to 1: per image, each of the 4 margins (left, top, right, bottom) of the picture
  around the warped string's ink, over (the ink's extent along that axis + h). The 64 px crop leaves
  the picture in a few per cent of the images, the 128 px crop in most (outside reads black).

Clutter:

- ``num_neighbours`` 0, 1, 2 with probabilities 0.5, 0.3, 0.2: digits beside the string, not annotated,
  each with a ``neighbour_side`` left, right, above, below with probabilities 0.25, 0.25, 0.25, 0.25 and
  a ``neighbour_style`` mnist, sans, sans_bold, segment with probabilities 0.4, 0.2, 0.2, 0.2;
  ``neighbour_gap`` 0.15 to 0.8 (x h) between its ink and the string's; ``neighbour_scale_side`` 0.4
  to 0.75 (its height over h) left or right of the string (smaller than the string's digits),
  ``neighbour_scale_line`` 0.4 to 1 above or below (another line of a sign); ``neighbour_slide`` 0 to 1,
  where along the string's side it sits.
- ``plaque`` False, True with probabilities 0.5, 0.5: a plate of another colour behind the string, with
  ``plaque_margin`` 0.1 to 1 (x h; once for x, once for y) around the string's ink and a
  ``plaque_border_px`` 0, 1, 2, 3 with probabilities 0.25, 0.25, 0.25, 0.25.
- ``num_bars`` 0, 1, 2 with probabilities 0.4, 0.4, 0.2: bars (door frames, sign edges), each
  ``bar_width_px`` 1 to 5 (rounded) wide, ``bar_length`` 0.2 to 1 (x the picture's longer side) long,
  of ``bar_opacity`` 0.4 to 1, vertical or horizontal (even odds) at a uniform place that keeps off the
  union of the digits' ink boxes (tried 6 times, else left out).

Background and colours:

- ``background`` smooth, siding, bricks with probabilities 0.5, 0.25, 0.25; each has a gradient of
  slope ``background_ramp`` -0.3 to 0.3 (in a uniform direction) and smooth noise (a 3-7 x 3-7 grid
  upsampled) of std ``background_noise`` 0.02 to 0.1, as version 1; siding adds lines every
  ``siding_period_px`` 4 to 14 px, bricks rows of ``brick_height_px`` 5 to 12 px with bricks of
  ``brick_length`` 2 to 4 (x the row height); their lines, tilted by ``pattern_tilt`` -0.05 to 0.05
  (rows per column), are darker or lighter (even odds) by ``pattern_contrast`` 0.03 to 0.15.
- Colours are muted (greys, browns, pastels: version 1's); the digits' colour differs in luminance from
  what is behind them (the plaque, else the background) by ``contrast`` 0.3 to 1 (drawn again until
  it does); a neighbour takes the digits' colour at even odds, else another.
- ``ink_opacity`` 0.85 to 1: per digit and neighbour. ``pixel_noise`` 0 to 0.04: per image, the std of
  Gaussian pixel noise. ``blur_radius`` 0 to 1.2: per image, a Gaussian blur of the whole picture.

Glyphs: MNIST digits cropped to their ink (coverage above 1/8); the font and seven-segment glyphs are
drawn once per tree at 64 px (:func:`~.drawing.glyph_bank`, whose checksum the tree's marker keeps: another
Pillow/FreeType build could draw them differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from stn_repro.data.synthetic.drawing import (
    INK_THRESHOLD,
    GlyphBank,
    Layer,
    apply_map,
    composite,
    glyph_bank,
    homography,
    ink_extent,
    layer_corners,
    layer_ink,
    luminance,
    matmul,
    muted_colour,
    upsample,
    warp_layer,
    warped_ink_box,
)

__all__ = ["CHOICES", "INK_THRESHOLD", "RANGES", "HouseNumber", "glyph_bank", "render_house_number"]

RANGES: dict[str, tuple[float, float]] = {
    "height_px": (12.0, 40.0),
    "digit_height_scale": (0.92, 1.08),
    "digit_aspect_scale": (0.8, 1.25),
    "digit_rotation_deg": (-5.0, 5.0),
    "digit_shift_y": (-0.08, 0.08),
    "spacing": (-0.05, 0.6),
    "gap_jitter": (-0.05, 0.05),
    "string_rotation_deg": (-15.0, 15.0),
    "string_shear": (-0.35, 0.35),
    "perspective_offset": (-0.1, 0.1),
    "box_edge_out": (-0.1, 0.45),
    "box_offset": (-0.15, 0.15),
    "margin": (0.25, 1.0),
    "neighbour_gap": (0.15, 0.8),
    "neighbour_scale_side": (0.4, 0.75),
    "neighbour_scale_line": (0.4, 1.0),
    "neighbour_slide": (0.0, 1.0),
    "plaque_margin": (0.1, 1.0),
    "bar_width_px": (1.0, 5.0),
    "bar_length": (0.2, 1.0),
    "bar_opacity": (0.4, 1.0),
    "background_ramp": (-0.3, 0.3),
    "background_noise": (0.02, 0.1),
    "siding_period_px": (4.0, 14.0),
    "brick_height_px": (5.0, 12.0),
    "brick_length": (2.0, 4.0),
    "pattern_tilt": (-0.05, 0.05),
    "pattern_contrast": (0.03, 0.15),
    "contrast": (0.3, 1.0),
    "ink_opacity": (0.85, 1.0),
    "pixel_noise": (0.0, 0.04),
    "blur_radius": (0.0, 1.2),
}
"""Every continuous draw's range (uniform), as the module docstring states them."""


CHOICES: dict[str, tuple[tuple, tuple[float, ...]]] = {
    "num_digits": ((1, 2, 3, 4, 5), (0.15, 0.40, 0.30, 0.10, 0.05)),
    "style": (("mnist", "sans", "sans_bold", "segment"), (0.4, 0.2, 0.2, 0.2)),
    "neighbour_style": (("mnist", "sans", "sans_bold", "segment"), (0.4, 0.2, 0.2, 0.2)),
    "num_neighbours": ((0, 1, 2), (0.5, 0.3, 0.2)),
    "neighbour_side": (("left", "right", "above", "below"), (0.25, 0.25, 0.25, 0.25)),
    "plaque": ((False, True), (0.5, 0.5)),
    "plaque_border_px": ((0, 1, 2, 3), (0.25, 0.25, 0.25, 0.25)),
    "num_bars": ((0, 1, 2), (0.4, 0.4, 0.2)),
    "background": (("smooth", "siding", "bricks"), (0.5, 0.25, 0.25)),
}
"""Every discrete draw's values and probabilities, as the module docstring states them."""


STYLES = CHOICES["style"][0]


@dataclass
class HouseNumber:
    """One picture: ``image`` uint8 ``[H, W, 3]``, the annotated ``boxes`` float64 ``[n, 4]`` (left, top,
    width, height; whole pixels, as SVHN's), raw SVHN ``labels`` (1-9, 10 = digit 0), the digits' true
    ``ink_boxes`` ``[n, 4]`` (same layout, whole pixels: the columns and rows with ink) and every draw
    (``params``: name -> value or list of values; see :data:`RANGES` and :data:`CHOICES`)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: list[int]
    ink_boxes: np.ndarray
    params: dict = field(default_factory=dict)


class _Draws:
    """Draws from ``rng`` by name, each kept in ``params`` (a list where a name is drawn more than once)."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.params = rng, {}

    def _keep(self, name: str, value, many: bool):
        if many:
            self.params.setdefault(name, []).append(value)
        else:
            self.params[name] = value
        return value

    def uniform(self, name: str, many: bool = False) -> float:
        low, high = RANGES[name]
        return self._keep(name, float(self.rng.uniform(low, high)), many)

    def choice(self, name: str, many: bool = False):
        values, p = CHOICES[name]
        value = values[int(self.rng.choice(len(values), p=np.array(p) / sum(p)))]
        return self._keep(name, value.item() if isinstance(value, np.generic) else value, many)


def render_house_number(rng: np.random.Generator, bank: GlyphBank) -> HouseNumber:
    """Draw one picture from ``rng`` and ``bank`` (the ranges: module docstring)."""
    draw = _Draws(rng)
    count = draw.choice("num_digits")
    style = draw.choice("style")
    h = draw.uniform("height_px")

    # The string on the plate, left to right: each digit scaled, rotated, shifted.
    digits, labels, x = [], [], 0.0
    spacing = draw.uniform("spacing")
    for k in range(count):
        glyph, label = _pick_glyph(rng, bank, style)
        labels.append(label)
        height = h * draw.uniform("digit_height_scale", many=True)
        alpha = _glyph_alpha(glyph, height, draw.uniform("digit_aspect_scale", many=True))
        alpha = _rotate(alpha, draw.uniform("digit_rotation_deg", many=True))
        l, t, r, b = ink_extent(alpha)
        y = -(t + b) / 2 + h * draw.uniform("digit_shift_y", many=True)
        digits.append(Layer(alpha, x - l, y))
        gap = h * (spacing + draw.uniform("gap_jitter", many=True)) if k < count - 1 else 0.0
        x += (r - l) + gap
    ink = np.array([layer_ink(layer) for layer in digits])
    u0, v0, u1, v1 = ink[:, 0].min(), ink[:, 1].min(), ink[:, 2].max(), ink[:, 3].max()
    centre = ((u0 + u1) / 2, (v0 + v1) / 2)

    # Neighbours (not annotated), placed beside the string's ink on the plate.
    neighbours = []
    for _ in range(draw.choice("num_neighbours")):
        side = draw.choice("neighbour_side", many=True)
        scale = draw.uniform(
            "neighbour_scale_line" if side in ("above", "below") else "neighbour_scale_side", True
        )
        glyph, _ = _pick_glyph(rng, bank, draw.choice("neighbour_style", many=True))
        alpha = _glyph_alpha(glyph, h * scale, 1.0)
        l, t, r, b = ink_extent(alpha)
        gap, slide = h * draw.uniform("neighbour_gap", many=True), draw.uniform("neighbour_slide", many=True)
        if side in ("left", "right"):
            nx = u0 - gap - r if side == "left" else u1 + gap - l
            ny = v0 + slide * (v1 - v0) - (t + b) / 2
        else:
            ny = v0 - gap - b if side == "above" else v1 + gap - t
            nx = u0 + slide * (u1 - u0) - (l + r) / 2
        neighbours.append(Layer(alpha, nx, ny))

    # The plate's warp: rotation and slant about the string's centre, then a perspective through the
    # string's ink-box corners moved by up to 0.1 h.
    angle = math.radians(draw.uniform("string_rotation_deg"))
    shear = draw.uniform("string_shear")
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]
    moved = []
    for u, v in corners:  # slant (x -= shear y), then rotate, about the centre; then the corner's shift
        x, y = u - centre[0] - shear * (v - centre[1]), v - centre[1]
        dx, dy = (h * draw.uniform("perspective_offset", many=True) for _ in range(2))
        moved.append((cos * x - sin * y + dx, sin * x + cos * y + dy))
    warp = homography(corners, moved)

    # The picture's extent: the warped string's ink plus margins.
    quad = np.concatenate([apply_map(warp, layer_corners(layer, ink_only=True)) for layer in digits])
    left, top = quad.min(0)
    right, bottom = quad.max(0)
    spans = [right - left + h, bottom - top + h] * 2  # left, top, right, bottom
    margins = [span * draw.uniform("margin", many=True) for span in spans]
    width = max(8, math.ceil(right - left + margins[0] + margins[2]))
    img_h = max(8, math.ceil(bottom - top + margins[1] + margins[3]))
    warp = matmul([[1.0, 0.0, margins[0] - left], [0.0, 1.0, margins[1] - top], [0.0, 0.0, 1.0]], warp)

    warped = [warp_layer(layer, warp, width, img_h) for layer in digits]
    ink_boxes = np.array([warped_ink_box(*w) for w in warped], dtype=np.float64)
    ink_union = (
        ink_boxes[:, 0].min(),
        ink_boxes[:, 1].min(),
        (ink_boxes[:, 0] + ink_boxes[:, 2]).max(),
        (ink_boxes[:, 1] + ink_boxes[:, 3]).max(),
    )

    # Colours and the background; the plaque behind the string.
    background = muted_colour(rng)
    canvas = _background(draw, rng, background, img_h, width)
    behind = background
    if draw.choice("plaque"):
        behind = muted_colour(rng)
        mx, my = (h * draw.uniform("plaque_margin", many=True) for _ in range(2))
        plate = np.array([[u0 - mx, v0 - my], [u1 + mx, v0 - my], [u1 + mx, v1 + my], [u0 - mx, v1 + my]])
        polygon = [tuple(p) for p in apply_map(warp, plate)]
        mask = Image.new("L", (width, img_h), 0)
        ImageDraw.Draw(mask).polygon(polygon, fill=255)
        composite(canvas, np.asarray(mask, dtype=np.float32) / 255.0, behind, 0, 0)
        border = draw.choice("plaque_border_px")
        if border:
            mask = Image.new("L", (width, img_h), 0)
            ImageDraw.Draw(mask).polygon(polygon, outline=255, width=border)
            composite(canvas, np.asarray(mask, dtype=np.float32) / 255.0, muted_colour(rng), 0, 0)
    while True:
        foreground = muted_colour(rng)
        if abs(luminance(foreground) - luminance(behind)) >= RANGES["contrast"][0]:
            break
    draw.params["contrast"] = abs(luminance(foreground) - luminance(behind))

    # Bars (door frames, sign edges) off the digits' ink box.
    for _ in range(draw.choice("num_bars")):
        thick = round(draw.uniform("bar_width_px", many=True))
        long = max(2, round(draw.uniform("bar_length", many=True) * max(img_h, width)))
        alpha = np.ones((long, thick) if rng.random() < 0.5 else (thick, long), dtype=np.float32)
        alpha *= draw.uniform("bar_opacity", many=True)
        ah, aw = alpha.shape
        for _ in range(6):
            cy, cx = int(rng.integers(-ah // 2, img_h)), int(rng.integers(-aw // 2, width))
            if cx + aw <= ink_union[0] or cx >= ink_union[2] or cy + ah <= ink_union[1] or cy >= ink_union[3]:
                composite(canvas, alpha, muted_colour(rng), cx, cy)
                break

    for layer in neighbours:
        alpha, nx, ny = warp_layer(layer, warp, width, img_h)
        colour = foreground if rng.random() < 0.5 else muted_colour(rng)
        composite(canvas, alpha * draw.uniform("ink_opacity", many=True), colour, nx, ny)
    for alpha, dx, dy in warped:
        composite(canvas, alpha * draw.uniform("ink_opacity", many=True), foreground, dx, dy)
    canvas += rng.normal(0, draw.uniform("pixel_noise"), size=canvas.shape)
    image = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(radius=draw.uniform("blur_radius")))

    # The annotation: each ink box with its edges moved, all shifted together, whole pixels.
    offset = [h * draw.uniform("box_offset", many=True) for _ in range(2)]
    boxes = []
    for l, t, w, b_h in ink_boxes:
        out = [b_h * draw.uniform("box_edge_out", many=True) for _ in range(4)]  # left, top, right, bottom
        x0 = min(max(0, round(l - out[0] + offset[0])), width - 1)
        y0 = min(max(0, round(t - out[1] + offset[1])), img_h - 1)
        x1 = max(min(width, round(l + w + out[2] + offset[0])), x0 + 1)
        y1 = max(min(img_h, round(t + b_h + out[3] + offset[1])), y0 + 1)
        boxes.append([x0, y0, x1 - x0, y1 - y0])
    draw.params["labels"] = labels
    return HouseNumber(
        image=np.asarray(image),
        boxes=np.array(boxes, dtype=np.float64),
        labels=[label or 10 for label in labels],
        ink_boxes=ink_boxes,
        params=draw.params,
    )


def _pick_glyph(rng: np.random.Generator, bank: GlyphBank, style: str) -> tuple[np.ndarray, int]:
    if style == "mnist":
        pick = int(rng.integers(len(bank.mnist)))
        return bank.mnist[pick], int(bank.mnist_labels[pick])
    label = int(rng.integers(10))
    return bank.drawn[style][label], label


def _glyph_alpha(glyph: np.ndarray, height: float, aspect_scale: float) -> np.ndarray:
    """``glyph`` resized to ``height`` px (width by its aspect x ``aspect_scale``), uint8 coverage."""
    glyph_h = max(4, round(height))
    glyph_w = max(2, round(glyph_h * glyph.shape[1] / glyph.shape[0] * aspect_scale))
    return np.asarray(Image.fromarray(glyph).resize((glyph_w, glyph_h), Image.Resampling.BILINEAR))


def _rotate(alpha: np.ndarray, degrees: float) -> np.ndarray:
    image = Image.fromarray(alpha).rotate(
        degrees, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0
    )
    return np.asarray(image)


def _background(
    draw: _Draws, rng: np.random.Generator, colour: np.ndarray, height: int, width: int
) -> np.ndarray:
    """A ``[height, width, 3]`` float background: a gradient and smooth noise, and siding or bricks."""
    kind = draw.choice("background")
    canvas = np.broadcast_to(colour, (height, width, 3)).astype(np.float64)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.arange(height, dtype=np.float64)[:, None], np.arange(width, dtype=np.float64)[None, :]
    ramp = ((xs - width / 2) * math.cos(angle) + (ys - height / 2) * math.sin(angle)) / max(width, height)
    canvas += draw.uniform("background_ramp") * ramp[..., None] * rng.uniform(0.5, 1.0, size=3)
    small = rng.normal(
        0, draw.uniform("background_noise"), size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3)
    )
    canvas += upsample(small, height, width)
    if kind == "smooth":
        return canvas
    sign = 1.0 if rng.random() < 0.5 else -1.0
    rows = ys + draw.uniform("pattern_tilt") * xs
    if kind == "siding":
        period = draw.uniform("siding_period_px")
        lines = np.mod(rows, period) < max(1.0, 0.2 * period)
    else:
        course = draw.uniform("brick_height_px")
        length = course * draw.uniform("brick_length")
        row_index = np.floor(rows / course)
        shifted = xs + (row_index % 2) * length / 2
        lines = (np.mod(rows, course) < 1.0) | (np.mod(shifted, length) < 1.0)
    canvas += sign * draw.uniform("pattern_contrast") * lines[..., None]
    return canvas
