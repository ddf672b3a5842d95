"""A synthetic SVHN format-1 tree built from MNIST digits and a few drawn styles: house-number-like
pictures with their ``digitStruct.mat``, imported by the real importer into ``synthetic-svhn_*`` sets
(``make data-svhn-synthetic``). It stands in where SVHN itself cannot be fetched; numbers from it are not
SVHN numbers.

Version 2 (:data:`SYNTHETIC_VERSION`) draws each picture with :func:`~.house_numbers.render_house_number`,
whose module docstring states every range: loose, noisy annotation boxes, rotated, slanted and
perspective-warped strings, neighbouring digits and sign edges, varied backgrounds and styles, so that
the union-box crop leaves the digits off-centre and of varying size, as in real SVHN. Version 1 (the
stand-in the first ``quick`` SVHN records were scored on) wrote the digits' exact ink boxes, so its crops
were centred and tight by construction; it is no longer drawn (git history: ``_render_house_number``
before this version).
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
from PIL import Image
from torch import Tensor

from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.sets import DEFAULT_SEED
from stn_repro.data.svhn.crops import crop_box
from stn_repro.data.svhn.digit_struct import DIGIT_STRUCT, SvhnImage, write_digit_struct
from stn_repro.data.svhn.importer import import_svhn
from stn_repro.data.svhn.stored import NUM_VALIDATION, SYNTHETIC_NAME
from stn_repro.data.synthetic.house_numbers import GlyphBank, glyph_bank, render_house_number
from stn_repro.io import current_umask
from stn_repro.seeding import derive_seed

SYNTHETIC_VERSION = 2
"""Bump whenever the synthetic renderer's output changes: existing synthetic trees are regenerated, their
stored sets imported again, and stored sets of another version are refused for training
(:func:`check_stand_in_version`). 1: exact ink boxes (centred crops); 2: :mod:`.house_numbers`."""


STAND_IN_ATTR = "stand_in_version"
"""The stored sets' attribute (and the run records' ``test_set`` key) naming the stand-in version they were
made from; a set or record without it is of version 1 (they predate the attribute)."""


TRUTH = "truth.json"
"""Per split of a tree: every picture's true ink boxes and draws (not read by the importer)."""


SYNTHETIC_COUNTS: dict[str, int] = {"train": 40_000, "test": 5_000}
"""Default synthetic split sizes: train includes the :data:`NUM_VALIDATION` held out as ``val``."""


_MARKER = "synthetic.json"


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
    digits for ``train`` and its test digits for ``test``). Each image is one
    :func:`~.house_numbers.render_house_number` picture (RGB PNG); its annotated boxes (whole pixels) and
    raw labels (10 = digit 0) go into ``digitStruct.mat`` (:func:`write_digit_struct`), and its true ink
    boxes and every draw into ``<split>/truth.json`` (:func:`read_truth`), which the importer ignores.

    Deterministic: the same digits, counts and seed give identical PNG bytes and digitStruct files, for
    any ``workers`` (threads; each image has its own generator seeded from ``(seed, split, index)``).
    The marker also keeps the checksum of the drawn glyphs (fonts, segments): a Pillow that draws them
    otherwise makes another tree, which is then regenerated, not mixed. Each split is generated in a temporary folder and renamed into place with a ``synthetic.json``
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
        bank = glyph_bank(digits_np, labels_np)
        marker = {
            "generator": "stn_repro.data.svhn.make_synthetic_svhn_tree",  # the key as first written: trees stay current
            "version": SYNTHETIC_VERSION,
            "split": split,
            "count": int(count),
            "seed": int(seed),
            "digits_sha256": hashlib.sha256(digits_np.tobytes() + labels_np.tobytes()).hexdigest(),
            "drawn_glyphs_sha256": bank.drawn_sha256(),
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
            _write_synthetic_split(tmp, bank, int(count), split_seed, workers)
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


def _write_synthetic_split(folder: Path, bank: GlyphBank, count: int, seed: int, workers: int) -> None:
    def one(index: int) -> tuple[SvhnImage, dict]:
        # One generator per image: the output does not depend on the number of threads.
        picture = render_house_number(np.random.default_rng(np.random.SeedSequence([seed, index])), bank)
        name = f"{index + 1}.png"
        Image.fromarray(picture.image).save(folder / name, format="PNG", compress_level=1)
        truth = {"name": name, "ink_boxes": picture.ink_boxes.astype(int).tolist(), "params": picture.params}
        return SvhnImage(name=name, boxes=picture.boxes, labels=picture.labels), truth

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(one, range(count)))
    else:
        done = [one(index) for index in range(count)]
    write_digit_struct(folder / DIGIT_STRUCT, [record for record, _ in done])
    truth = {"version": SYNTHETIC_VERSION, "images": [entry for _, entry in done]}
    (folder / TRUTH).write_text(json.dumps(truth, separators=(",", ":"), sort_keys=True) + "\n")


def read_truth(folder: Path) -> list[dict]:
    """The ``truth.json`` of one split's folder: per picture (in file order) its ``name``, the digits' true
    ``ink_boxes`` (left, top, width, height; whole pixels, as the annotated boxes) and every draw
    (``params``, named as in :data:`~.house_numbers.RANGES` and :data:`~.house_numbers.CHOICES`, with
    ``labels`` 0-9 and ``contrast``)."""
    path = Path(folder) / TRUTH
    try:
        truth = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(
            f"{path} is missing or unreadable ({error}); fix: delete {Path(folder).parent} and rerun "
            "`make data-svhn-synthetic`"
        ) from None
    if truth.get("version") != SYNTHETIC_VERSION:
        raise DataError(
            f"{path} is of stand-in version {truth.get('version')}, not {SYNTHETIC_VERSION}; fix: rerun "
            "`make data-svhn-synthetic`"
        )
    return truth["images"]


def ink_in_crop(boxes: np.ndarray, ink_boxes: np.ndarray, size: int) -> np.ndarray:
    """Where the digits' ink lies in the ``size`` px crop the importer cuts from the annotated ``boxes``:
    ``[centre x, centre y, width, height]`` of the union of ``ink_boxes``, each over the crop's side (0.5,
    0.5: centred; with exact ink boxes as annotation, width and height are 1 / 1.3 at 64 px). The crop is
    resized without keeping its aspect, so these are also the fractions of the ``size`` px image."""
    x0, y0, x1, y1 = crop_box(boxes, size)
    ink = np.asarray(ink_boxes, dtype=np.float64).reshape(-1, 4)
    left, top = ink[:, 0].min(), ink[:, 1].min()
    right, bottom = (ink[:, 0] + ink[:, 2]).max(), (ink[:, 1] + ink[:, 3]).max()
    width, height = x1 - x0, y1 - y0
    return np.array(
        [
            ((left + right) / 2 - x0) / width,
            ((top + bottom) / 2 - y0) / height,
            (right - left) / width,
            (bottom - top) / height,
        ]
    )


def check_stand_in_version(attrs: Mapping, path: Path | str) -> int:
    """The stand-in version a stored synthetic set was made from (``attrs``: its attributes; none said:
    version 1); a :class:`DataError` naming ``path`` and the fix where it is not :data:`SYNTHETIC_VERSION`,
    so that no run trains or scores on an outdated stand-in."""
    version = int(attrs.get(STAND_IN_ATTR, 1))
    if version != SYNTHETIC_VERSION:
        raise DataError(
            f"stored set {path} is of synthetic stand-in version {version}, this code draws version "
            f"{SYNTHETIC_VERSION}; fix: run `make data-svhn-synthetic` (it rebuilds the tree and the sets)"
        )
    return version


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
        attrs={STAND_IN_ATTR: SYNTHETIC_VERSION},
        workers=workers,
        log=log,
    )
