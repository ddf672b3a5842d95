"""A synthetic stand-in in CUB-200-2011's exact layout and file formats: "birds" of two textured parts
(head and body, whose *pair* is the class) on cluttered backgrounds. Test fixtures and the stand-in
(:func:`build_synthetic_cub`, ``make data-cub-synthetic``) are read by the same code as the real data; its
numbers are not CUB numbers, and everything built from it says synthetic.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stn_repro.data.cub.index import CUB_FOLDER, INDEX_FILES, SYNTHETIC_MARKER, cub_root, read_cub_index
from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.sets import DEFAULT_SEED
from stn_repro.io import current_umask

SYNTHETIC_VERSION = 1
"""Bump whenever the synthetic renderer's output changes: existing synthetic trees are rebuilt."""


SYNTHETIC_DEFAULTS = {"classes": 30, "images_per_class": 60, "image_size": (200, 300)}
"""The stand-in ``make data-cub-synthetic`` builds: 30 classes (6 head x 5 body patterns), 60 images each
(half train, half test, as CUB's about 30/30), 200-300 px sides."""


_TEXTURES = ("hstripes", "vstripes", "checker", "dots", "diagonal", "solid")


@dataclass(frozen=True)
class _Pattern:
    texture: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def part_patterns(classes: int) -> tuple[list[_Pattern], list[_Pattern], list[tuple[int, int]]]:
    """The synthetic classes: ``(head patterns, body patterns, class -> (head, body))``.

    ``H = ceil(sqrt(classes))`` head and ``ceil(classes / H)`` body patterns, each a texture in two colours;
    class ``c`` is head ``c mod H`` with body ``c div H``, so neither part alone tells the class.
    """
    heads = math.ceil(math.sqrt(classes))
    bodies = math.ceil(classes / heads)
    head = [
        _Pattern(_TEXTURES[i % len(_TEXTURES)], _hsv(i / heads, 0.9, 0.95), _hsv(i / heads, 0.6, 0.35))
        for i in range(heads)
    ]
    body = [
        _Pattern(
            _TEXTURES[(i + 3) % len(_TEXTURES)],
            _hsv((i + 0.5) / bodies, 0.5, 0.85),
            _hsv((i + 0.5) / bodies + 0.5, 0.8, 0.3),
        )
        for i in range(bodies)
    ]
    return head, body, [(c % heads, c // heads) for c in range(classes)]


def _texture(pattern: _Pattern, xs: np.ndarray, ys: np.ndarray, period: float) -> np.ndarray:
    a, b = np.array(pattern.colour_a), np.array(pattern.colour_b)
    half = max(1.0, period / 2)
    if pattern.texture == "hstripes":
        pick = (ys // half) % 2
    elif pattern.texture == "vstripes":
        pick = (xs // half) % 2
    elif pattern.texture == "checker":
        pick = ((xs // half) + (ys // half)) % 2
    elif pattern.texture == "diagonal":
        pick = ((xs + ys) // half) % 2
    elif pattern.texture == "dots":
        dx, dy = (xs % period) - period / 2, (ys % period) - period / 2
        pick = (dx * dx + dy * dy) < (0.3 * period) ** 2
    else:
        pick = np.zeros_like(xs)
    pick = pick.astype(np.float64)[..., None]
    return a * (1 - pick) + b * pick


def _ellipse_alpha(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Coverage of an axis-aligned ellipse, with a one-pixel soft edge."""
    r = np.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)
    return np.clip((1.0 - r) * min(ax, ay), 0.0, 1.0)


def _paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    canvas *= 1 - alpha[..., None]
    canvas += colour * alpha[..., None]


def render_synthetic_bird(
    rng: np.random.Generator, head: _Pattern, body: _Pattern, width: int, height: int
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """One synthetic image ``[height, width, 3]`` uint8 and its bird box ``(x, y, w, h)``.

    A smooth coloured background with noise and 2-5 clutter blobs of random textures and colours; the
    "bird": an elliptical body in its body pattern and a round head in its head pattern at one end of it
    (facing left or right), at a random position, its size 24-44% of the shorter side. The two parts are
    what tells the class; they are small against the image, so a model has to find them.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    short = min(width, height)
    base = rng.uniform(0.25, 0.75, size=3)
    canvas = np.broadcast_to(base, (height, width, 3)).copy()
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle)) / max(width, height)
    canvas += rng.uniform(-0.3, 0.3) * ramp[..., None] * rng.uniform(0.5, 1.0, size=3)
    for _ in range(int(rng.integers(2, 6))):
        clutter = _Pattern(
            _TEXTURES[int(rng.integers(len(_TEXTURES)))],
            tuple(rng.uniform(0, 1, size=3)),
            tuple(rng.uniform(0, 1, size=3)),
        )
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ax, ay = short * rng.uniform(0.05, 0.2, size=2)
        alpha = _ellipse_alpha(xs, ys, cx, cy, ax, ay) * rng.uniform(0.5, 1.0)
        _paint(canvas, alpha, _texture(clutter, xs, ys, short * rng.uniform(0.03, 0.08)))
    # The bird: body semi-axes (a, b), head radius r at the front end, slightly above the body's axis.
    a = short * rng.uniform(0.12, 0.22)
    b = a * rng.uniform(0.5, 0.7)
    r = b * rng.uniform(0.6, 0.8)
    facing = 1 if rng.random() < 0.5 else -1
    reach = a + 1.6 * r  # from the body's centre to the far edge of the head
    cx = rng.uniform(reach + 1, width - reach - 1) if width > 2 * reach + 2 else width / 2
    cy = rng.uniform(b + r + 1, height - b - 1) if height > 2 * b + r + 2 else height / 2
    hx, hy = cx + facing * (a + 0.6 * r), cy - 0.5 * b
    period = max(2.0, r * 0.7)
    _paint(canvas, _ellipse_alpha(xs, ys, cx, cy, a, b), _texture(body, xs - cx, ys - cy, period))
    _paint(canvas, _ellipse_alpha(xs, ys, hx, hy, r, r), _texture(head, xs - hx, ys - hy, period))
    _paint(
        canvas, _ellipse_alpha(xs, ys, hx + facing * 0.45 * r, hy - 0.2 * r, 0.15 * r, 0.15 * r), np.zeros(3)
    )
    canvas += rng.normal(0, 0.02, size=canvas.shape)
    image = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
    x0, x1 = max(0.0, min(cx - a, hx - r)), min(float(width), max(cx + a, hx + r))
    y0, y1 = max(0.0, min(cy - b, hy - r)), min(float(height), max(cy + b, hy + r))
    return image, (round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1))


def write_cub_tree(
    dest: Path,
    images_per_class: int,
    classes: int,
    *,
    train_per_class: int | None = None,
    image_size: tuple[int, int] = (48, 64),
    seed: int = DEFAULT_SEED,
    jpeg_quality: int = 90,
    synthetic_marker: bool = True,
    workers: int = 1,
    shuffle_ids: bool = True,
) -> Path:
    """Write a CUB-format tree ``dest/CUB_200_2011/`` of synthetic birds and return that folder.

        Exactly CUB's layout and file formats: ``images/<NNN.Class_name>/<Class_Name>_<NNNN>_<id>.jpg`` (JPEG),
        ``images.txt`` (``<image_id> <class folder>/<file>``), ``image_class_labels.txt`` (``<image_id>
        <class_id>``, 1-based), ``train_test_split.txt`` (``<image_id> <1|0>``, 1 = training),
        ``classes.txt`` (``<class_id> <NNN.Class_name>``), ``bounding_boxes.txt`` (``<image_id> <x> <y> <width>
        <height>``, floats); image ids run 1..N class folder by class folder, as CUB's, and, as CUB's, not in
    file-name order within a class (``shuffle_ids``: a seeded order; off, file-name order). Each class has
        ``images_per_class`` images, ``train_per_class`` of them (default half, at least one) in the training
        split, chosen at random. Image sides are drawn from ``image_size`` (min, max) px; the images are
        :func:`render_synthetic_bird` of the class's head and body patterns (:func:`part_patterns`).

        With ``synthetic_marker`` a ``synthetic.json`` (generator, version, arguments) marks the tree as the
        stand-in. Deterministic: the same arguments give the same bytes, for any ``workers``. Written into a
        temporary folder and renamed into place; an existing ``dest/CUB_200_2011`` is replaced only if it is a
        synthetic tree.
    """
    if classes < 1 or images_per_class < 2:
        raise ValueError("write_cub_tree needs at least one class and two images per class")
    train_per_class = max(1, images_per_class // 2) if train_per_class is None else train_per_class
    if not 1 <= train_per_class < images_per_class:
        raise ValueError(f"train_per_class={train_per_class} must lie in [1, images_per_class)")
    low, high = image_size
    dest = Path(dest)
    target = dest / CUB_FOLDER
    dest.mkdir(parents=True, exist_ok=True)
    heads, bodies, by_class = part_patterns(classes)
    names = [f"{c + 1:03d}.Synthetic_h{h}_b{b}" for c, (h, b) in enumerate(by_class)]
    jobs = []
    for c, folder in enumerate(names):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, c]))
        train = set(rng.choice(images_per_class, size=train_per_class, replace=False).tolist())
        stem = folder.split(".", 1)[1].title()
        files = sorted(
            f"{stem}_{k + 1:04d}_{c * images_per_class + k + 1}.jpg" for k in range(images_per_class)
        )
        for k, file in enumerate(files):
            jobs.append((c, folder, file, k in train))
    scratch = Path(tempfile.mkdtemp(dir=dest, prefix=".cub-tree-"))
    tree = scratch / CUB_FOLDER

    def one(job_id: int) -> tuple[float, float, float, float]:
        c, folder, file, _ = jobs[job_id]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 11, job_id]))
        width, height = (int(v) for v in rng.integers(low, high + 1, size=2))
        head, body = by_class[c]
        image, box = render_synthetic_bird(rng, heads[head], bodies[body], width, height)
        Image.fromarray(image).save(tree / "images" / folder / file, format="JPEG", quality=jpeg_quality)
        return box

    try:
        for folder in names:
            (tree / "images" / folder).mkdir(parents=True)
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                boxes = list(pool.map(one, range(len(jobs))))
        else:
            boxes = [one(k) for k in range(len(jobs))]
        lines: dict[str, list[str]] = {name: [] for name in INDEX_FILES}
        order = []  # the images in id order: class by class; within a class shuffled, as CUB's images.txt
        for c in range(classes):
            mine = [k for k, job in enumerate(jobs) if job[0] == c]
            if shuffle_ids:
                mine = np.random.default_rng(np.random.SeedSequence([seed, 13, c])).permutation(mine).tolist()
            order += mine
        for image_id, k in enumerate(order, 1):
            (c, folder, file, train), box = jobs[k], boxes[k]
            lines["images.txt"].append(f"{image_id} {folder}/{file}")
            lines["image_class_labels.txt"].append(f"{image_id} {c + 1}")
            lines["train_test_split.txt"].append(f"{image_id} {int(train)}")
            lines["bounding_boxes.txt"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
        lines["classes.txt"] = [f"{c + 1} {name}" for c, name in enumerate(names)]
        for name, rows in lines.items():
            (tree / name).write_text("\n".join(rows) + "\n")
        if synthetic_marker:
            marker = {
                "generator": "stn_repro.data.cub.write_cub_tree",  # the key as first written: trees stay current
                "version": SYNTHETIC_VERSION,
                "synthetic": True,
                "classes": classes,
                "images_per_class": images_per_class,
                "train_per_class": train_per_class,
                "image_size": list(image_size),
                "seed": seed,
                "note": "synthetic stand-in for CUB-200-2011 (two textured parts per class), not CUB",
            }
            (tree / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        os.chmod(tree, 0o777 & ~current_umask())
        if target.exists():
            if not (target / SYNTHETIC_MARKER).is_file():
                raise DataError(
                    f"{target} exists and is not a synthetic tree; fix: delete it or choose another destination"
                )
            shutil.rmtree(target)
        os.replace(tree, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def build_synthetic_cub(
    data_dir: Path | None = None,
    *,
    classes: int = SYNTHETIC_DEFAULTS["classes"],
    images_per_class: int = SYNTHETIC_DEFAULTS["images_per_class"],
    image_size: Sequence[int] = SYNTHETIC_DEFAULTS["image_size"],
    seed: int = DEFAULT_SEED,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> Path:
    """The synthetic stand-in at ``<data_dir>/synthetic-cub/CUB_200_2011/`` (``make data-cub-synthetic``):
    :func:`write_cub_tree`, then the same checks as the real data (:func:`read_cub_index`, every file).
    A tree made with the same arguments and generator version is left alone."""
    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    target = cub_root(data_dir, synthetic=True)
    wanted = {
        "version": SYNTHETIC_VERSION,
        "classes": classes,
        "images_per_class": images_per_class,
        "image_size": list(image_size),
        "seed": seed,
    }
    try:
        marker = json.loads((target / SYNTHETIC_MARKER).read_text())
        if all(marker.get(k) == v for k, v in wanted.items()):
            read_cub_index(target, synthetic=True)
            log(f"  {target}: up to date")
            return target
    except (OSError, ValueError, DataError):
        pass
    log(f"  writing {classes * images_per_class:,} synthetic images into {target}")
    write_cub_tree(
        target.parent,
        images_per_class,
        classes,
        image_size=(int(image_size[0]), int(image_size[1])),
        seed=seed,
        workers=workers,
        shuffle_ids=False,  # the stand-in of version 1 as the committed runs read it (ids in file-name order)
    )
    index = read_cub_index(target, synthetic=True)
    log(
        f"  {target}: {len(index.paths):,} images ({int(index.is_train.sum()):,} train), "
        f"{index.num_classes} classes; SYNTHETIC, not CUB"
    )
    return target
