"""A synthetic SVHN format-1 tree built from MNIST digits: house-number-like pictures with their
``digitStruct.mat``, imported by the real importer into ``synthetic-svhn_*`` sets (``make
data-svhn-synthetic``). It stands in where SVHN itself cannot be fetched; numbers from it are not SVHN numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.sets import DEFAULT_SEED
from stn_repro.data.svhn.digit_struct import DIGIT_STRUCT, SvhnImage, write_digit_struct
from stn_repro.data.svhn.importer import import_svhn
from stn_repro.data.svhn.stored import NUM_VALIDATION, SYNTHETIC_NAME
from stn_repro.io import current_umask
from stn_repro.seeding import derive_seed

SYNTHETIC_VERSION = 1
"""Bump whenever the synthetic renderer's output changes: existing synthetic trees are regenerated."""


SYNTHETIC_COUNTS: dict[str, int] = {"train": 40_000, "test": 5_000}
"""Default synthetic split sizes: train includes the :data:`NUM_VALIDATION` held out as ``val``."""


_MARKER = "synthetic.json"


_LENGTH_P = np.array([0.15, 0.40, 0.30, 0.10, 0.05])  # digits per image; SVHN is mostly 2-3, 4-5 rarer


def make_synthetic_svhn_tree(
    dest: Path,
    digits_uint8: Tensor | Mapping[str, Tensor],
    digit_labels: Tensor | Mapping[str, Tensor],
    counts: Mapping[str, int] | None = None,
    seed: int = DEFAULT_SEED,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> Path:
    """Write a synthetic SVHN format-1 tree: ``dest/<split>/1.png, 2.png, ...`` and
    ``dest/<split>/digitStruct.mat`` for every split in ``counts`` (default :data:`SYNTHETIC_COUNTS`).

    **Convention**: ``digits_uint8 [M, 28, 28]`` (MNIST-like, 0 = background) with ``digit_labels [M]``
    (0-9), or a mapping split -> tensor to draw each split from its own digits (e.g. MNIST's training
    digits for ``train`` and its test digits for ``test``). Each image is a house-number-like RGB picture:
    1-5 digits in a row (15/40/30/10/5%) with varying height (14-36 px), spacing (slightly overlapping to
    wide), aspect, vertical jitter and rotation (up to about 8 degrees); a mostly muted foreground colour
    that differs in luminance from a textured background (colour gradient plus smooth and fine noise);
    clutter (pieces of other digits and bars, kept off the digits' union box); margins from tight (the
    30% crop then leaves the image) to wide, so images are about 25-500 px wide (median about 125); a
    slight blur. The digit boxes (ink extent above 30%, whole pixels) and raw labels (10 = digit 0) go
    into ``digitStruct.mat`` (:func:`write_digit_struct`).

    Deterministic: the same digits, counts and seed give identical PNG bytes and digitStruct files, for
    any ``workers`` (threads; each image has its own generator seeded from ``(seed, split, index)``).
    Each split is generated in a temporary folder and renamed into place with a ``synthetic.json``
    marker; a split whose marker matches is left alone, so a second call does nothing. Returns ``dest``.
    """
    dest = Path(dest)
    counts = dict(SYNTHETIC_COUNTS if counts is None else counts)
    dest.mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        digits = digits_uint8[split] if isinstance(digits_uint8, Mapping) else digits_uint8
        labels = digit_labels[split] if isinstance(digit_labels, Mapping) else digit_labels
        if digits.dtype != torch.uint8 or digits.dim() != 3 or labels.shape != digits.shape[:1]:
            raise ValueError(
                f"digits must be uint8 [M, H, W] with labels [M], got {digits.dtype} {tuple(digits.shape)}"
                f" and {tuple(labels.shape)}"
            )
        digits_np, labels_np = digits.cpu().numpy(), labels.cpu().numpy().astype(np.int64)
        split_seed = derive_seed(seed, "synthetic-svhn", split)
        marker = {
            "generator": "stn_repro.data.svhn.make_synthetic_svhn_tree",  # the key as first written: trees stay current
            "version": SYNTHETIC_VERSION,
            "split": split,
            "count": int(count),
            "seed": int(seed),
            "digits_sha256": hashlib.sha256(digits_np.tobytes() + labels_np.tobytes()).hexdigest(),
        }
        folder = dest / split
        if folder.exists():
            try:
                if json.loads((folder / _MARKER).read_text()) == marker:
                    log(f"  {folder}: up to date")
                    continue
            except (OSError, ValueError):
                raise DataError(
                    f"{folder} exists but was not made by make_synthetic_svhn_tree (no valid {_MARKER}); "
                    "fix: delete it or choose another destination"
                ) from None
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{split}-"))
        try:
            _write_synthetic_split(tmp, digits_np, labels_np, int(count), split_seed, workers)
            (tmp / _MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
            os.chmod(tmp, 0o777 & ~current_umask())
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"  {folder}: wrote {count} synthetic images")
    return dest


def _write_synthetic_split(
    folder: Path, digits: np.ndarray, labels: np.ndarray, count: int, seed: int, workers: int
) -> None:
    glyphs = _tight_glyphs(digits)

    def one(index: int) -> SvhnImage:
        # One generator per image: the output does not depend on the number of threads.
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        image, boxes, raw = _render_house_number(rng, glyphs, labels)
        name = f"{index + 1}.png"
        Image.fromarray(image).save(folder / name, format="PNG", compress_level=1)
        return SvhnImage(name=name, boxes=boxes, labels=raw)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            records = list(pool.map(one, range(count)))
    else:
        records = [one(index) for index in range(count)]
    write_digit_struct(folder / DIGIT_STRUCT, records)


def _tight_glyphs(digits: np.ndarray) -> list[np.ndarray]:
    """Each digit cropped to its ink (pixels above 1/8 of full scale); a blank digit stays whole."""
    ink = digits > 32
    rows, cols = ink.any(2), ink.any(1)  # [M, H], [M, W]
    height, width = digits.shape[1:]
    top, bottom = rows.argmax(1), height - rows[:, ::-1].argmax(1)
    left, right = cols.argmax(1), width - cols[:, ::-1].argmax(1)
    blank = ~rows.any(1)
    top[blank], bottom[blank], left[blank], right[blank] = 0, height, 0, width
    return [digit[t:b, l:r] for digit, t, b, l, r in zip(digits, top, bottom, left, right, strict=True)]


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0, 1)
    return np.clip(grey + rng.uniform(0, 0.8) * (rng.uniform(0, 1, size=3) - grey), 0, 1)


def _luminance(colour: np.ndarray) -> float:
    return float(colour @ np.array([0.299, 0.587, 0.114]))


def _upsample(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of ``small [h, w, C]`` to ``[height, width, C]`` (corners aligned)."""
    h, w = small.shape[:2]
    ys, xs = np.linspace(0, h - 1, height), np.linspace(0, w - 1, width)
    y0, x0 = np.minimum(ys.astype(int), h - 2), np.minimum(xs.astype(int), w - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = small[y0][:, x0] * (1 - fx) + small[y0][:, x0 + 1] * fx
    bottom = small[y0 + 1][:, x0] * (1 - fx) + small[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _render_house_number(
    rng: np.random.Generator, glyphs: list[np.ndarray], labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    count = int(rng.choice(len(_LENGTH_P), p=_LENGTH_P)) + 1
    height = rng.uniform(14, 36)
    row_angle = rng.uniform(-4, 4)
    pieces, raw = [], []
    for _ in range(count):
        pick = int(rng.integers(len(glyphs)))
        glyph = glyphs[pick]
        aspect = glyph.shape[1] / glyph.shape[0] * rng.uniform(0.8, 1.25)
        glyph_h = max(4, round(height * rng.uniform(0.95, 1.05)))
        glyph_w = max(2, round(glyph_h * aspect))
        image = Image.fromarray(glyph).resize((glyph_w, glyph_h), Image.Resampling.BILINEAR)
        image = image.rotate(
            row_angle + rng.uniform(-4, 4), resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0
        )
        pieces.append(np.asarray(image, dtype=np.float32) / 255.0)
        raw.append(int(labels[pick]) or 10)
    gaps = [height * rng.uniform(-0.03, 0.3) for _ in range(count - 1)]
    jitter = [height * rng.uniform(-0.06, 0.06) for _ in range(count)]
    row_w = sum(p.shape[1] for p in pieces) + sum(gaps)
    row_h = max(p.shape[0] + j for p, j in zip(pieces, jitter, strict=True)) - min(jitter)
    # Margins from tight (the 30% crop leaves the image) to wide (context for the 128 px crops).
    margin_l, margin_r = (row_w + height) * rng.uniform(0.03, 0.8, size=2)
    margin_t, margin_b = row_h * rng.uniform(0.05, 1.2, size=2)
    width = max(8, round(margin_l + row_w + margin_r))
    img_h = max(8, round(margin_t + row_h + margin_b))

    # Colours, mostly muted (greys, browns, pastels): a background and a foreground that differ in
    # luminance by at least 0.3.
    background = _muted_colour(rng)
    while True:
        foreground = _muted_colour(rng)
        if abs(_luminance(foreground) - _luminance(background)) >= 0.3:
            break
    canvas = np.broadcast_to(background, (img_h, width, 3)).astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:img_h, 0:width]
    ramp = ((xs - width / 2) * np.cos(angle) + (ys - img_h / 2) * np.sin(angle)) / max(width, img_h)
    canvas += rng.uniform(-0.3, 0.3) * ramp[..., None] * rng.uniform(0.5, 1.0, size=3)
    small = rng.normal(0, rng.uniform(0.02, 0.1), size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
    canvas += _upsample(small, img_h, width)

    # The digits, left to right.
    boxes = []
    x = margin_l
    top0 = margin_t - min(jitter)
    placements = []
    for k, piece in enumerate(pieces):
        px, py = round(x), round(top0 + jitter[k])
        placements.append((px, py, piece))
        ink_rows = np.flatnonzero((piece > 0.3).any(1))
        ink_cols = np.flatnonzero((piece > 0.3).any(0))
        if len(ink_rows) == 0:
            ink_rows, ink_cols = np.array([0, piece.shape[0] - 1]), np.array([0, piece.shape[1] - 1])
        left, top = px + ink_cols[0], py + ink_rows[0]
        boxes.append([left, top, ink_cols[-1] - ink_cols[0] + 1, ink_rows[-1] - ink_rows[0] + 1])
        x += piece.shape[1] + (gaps[k] if k < count - 1 else 0)
    boxes = np.array(boxes, dtype=np.float64)
    union = (
        boxes[:, 0].min(),
        boxes[:, 1].min(),
        (boxes[:, 0] + boxes[:, 2]).max(),
        (boxes[:, 1] + boxes[:, 3]).max(),
    )

    # Clutter off the digits: pieces of other digits and bars (door frames, plate edges).
    for _ in range(int(rng.integers(0, 4))):
        colour = _muted_colour(rng) if rng.random() < 0.5 else foreground
        opacity = rng.uniform(0.4, 1.0)
        if rng.random() < 0.6:
            glyph = glyphs[int(rng.integers(len(glyphs)))].astype(np.float32) / 255.0
            gh, gw = glyph.shape
            ph, pw = max(2, round(gh * rng.uniform(0.3, 0.7))), max(2, round(gw * rng.uniform(0.3, 0.9)))
            oy, ox = int(rng.integers(0, gh - ph + 1)), int(rng.integers(0, gw - pw + 1))
            scale = height * rng.uniform(0.6, 1.2) / gh
            size = (max(2, round(pw * scale)), max(2, round(ph * scale)))
            patch = Image.fromarray((glyph[oy : oy + ph, ox : ox + pw] * 255).astype(np.uint8))
            alpha = np.asarray(patch.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        else:
            vertical = rng.random() < 0.5
            thick, long = int(rng.integers(1, 5)), int(rng.integers(8, max(9, max(img_h, width))))
            alpha = np.ones((long, thick) if vertical else (thick, long), dtype=np.float32)
        ah, aw = alpha.shape
        for _ in range(6):
            cy, cx = int(rng.integers(-ah // 2, img_h)), int(rng.integers(-aw // 2, width))
            if cx + aw <= union[0] or cx >= union[2] or cy + ah <= union[1] or cy >= union[3]:
                _composite(canvas, alpha * opacity, colour, cx, cy)
                break

    for px, py, piece in placements:
        _composite(canvas, piece * rng.uniform(0.85, 1.0), foreground, px, py)
    canvas += rng.normal(0, rng.uniform(0.0, 0.04), size=canvas.shape)
    image = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 1.0))))
    return np.asarray(image), boxes, raw


def _composite(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, x: int, y: int) -> None:
    """Blend ``colour`` into ``canvas`` with ``alpha`` placed at ``(x, y)`` (clipped to the canvas)."""
    h, w = canvas.shape[:2]
    y0, x0 = max(0, y), max(0, x)
    y1, x1 = min(h, y + alpha.shape[0]), min(w, x + alpha.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + colour * a


def build_synthetic_svhn(
    data_dir: Path | None = None,
    digits_uint8: Tensor | Mapping[str, Tensor] | None = None,
    digit_labels: Tensor | Mapping[str, Tensor] | None = None,
    *,
    counts: Mapping[str, int] | None = None,
    sizes: Sequence[int] = (64, 128),
    seed: int = DEFAULT_SEED,
    num_validation: int = NUM_VALIDATION,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """The synthetic stand-in end to end: :func:`make_synthetic_svhn_tree` into
    ``<data_dir>/synthetic-svhn/``, then :func:`import_svhn` (``name="synthetic-svhn"``, no official
    counts) into ``<data_dir>/svhn_sets/synthetic-svhn_<size>px_<split>.h5``. Without digits, MNIST's
    (training digits for ``train``, test digits for ``test``) from ``data_dir``. Idempotent."""
    from stn_repro.data.mnist import load_mnist

    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    counts = dict(SYNTHETIC_COUNTS if counts is None else counts)
    if digits_uint8 is None or digit_labels is None:
        try:
            mnist = load_mnist(data_dir)
        except DataError as error:
            raise DataError(f"the synthetic SVHN stand-in is built from MNIST digits: {error}") from None
        digits_uint8 = {"train": mnist.train_images, "test": mnist.test_images}
        digit_labels = {"train": mnist.train_labels, "test": mnist.test_labels}
    tree = make_synthetic_svhn_tree(
        data_dir / SYNTHETIC_NAME, digits_uint8, digit_labels, counts, seed, workers, log
    )
    description = (
        f"synthetic SVHN-format tree (make_synthetic_svhn_tree v{SYNTHETIC_VERSION}, seed {seed}, "
        + ", ".join(f"{split} {count}" for split, count in counts.items())
        + "); not SVHN"
    )
    return import_svhn(
        tree,
        data_dir,
        splits=tuple(counts),
        sizes=sizes,
        name=SYNTHETIC_NAME,
        seed=seed,
        num_validation=num_validation,
        expect_official_counts=False,
        description=description,
        workers=workers,
        log=log,
    )
