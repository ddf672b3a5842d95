"""SVHN multi-digit data (spec Sect. 5): the official format-1 files, the Goodfellow et al. (2013) crops,
stored checksummed sets, the training stream, and a synthetic SVHN-format stand-in built from MNIST.

- Source: SVHN "format 1" (full numbers): ``train/``, ``test/``, ``extra/`` folders of PNGs, each with a
  ``digitStruct.mat`` (MATLAB v7.3, i.e. HDF5) that lists every image's digit boxes and labels. The
  folders, or the archives ``train.tar.gz``, ``test.tar.gz``, ``extra.tar.gz`` from
  http://ufldl.stanford.edu/housenumbers/, are imported by :func:`import_svhn` (``make data-svhn``).
- Stored sets: ``<data_dir>/svhn_sets/<name>_<size>px_<split>.h5`` with ``images`` uint8 ``[N, 3, S, S]``,
  ``labels`` int64 ``[N, 5]`` (digits 0-9, :data:`NO_DIGIT` after the last digit), ``length`` int64 ``[N]``
  and ``names`` (the source PNG names, fixed-length bytes); :func:`load_svhn_set` verifies version and
  checksum. Split ``val`` is :data:`NUM_VALIDATION` images of the official ``train`` split (a fixed seeded
  choice), removed from ``train``.
- Training: :class:`SvhnStream` (seeded epoch order and random 54 x 54 crops, exact resume) and
  :func:`center_crop` for the evaluation sets.
- Synthetic stand-in (SVHN itself cannot be fetched everywhere): :func:`make_synthetic_svhn_tree` writes
  a format-1 tree of house-number-like images built from MNIST digits, which the same importer turns into
  ``synthetic-svhn_*`` sets (``make data-svhn-synthetic``). Numbers from it are not SVHN numbers.

**Convention**: boxes are ``(left, top, width, height)`` in pixels of the source image, as SVHN stores
them; pixel ``(i, j)`` (row, column) covers ``[j, j + 1) x [i, i + 1)``, so a box covers the columns
``left .. left + width - 1`` (0-based, as the common Python readers take them: the SVHN documentation
does not say; a 1-based reading would move every crop by one source pixel). Images in tensors are ``[N, 3, S, S]`` uint8, RGB, 0 = black. SVHN's raw
label 10 is the digit 0; stored labels are the digits themselves (0-9) and :data:`NO_DIGIT` (10) for an
empty position. Every seeded choice derives its seed from one base seed with
:func:`~stn_repro.data.sets.derive_seed`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image, ImageFilter, UnidentifiedImageError
from torch import Tensor

from stn_repro.data.files import DataError, default_data_dir, download_verified
from stn_repro.data.sets import DEFAULT_SEED, SeededBatchStream, read_set, validation_indices, write_set
from stn_repro.io import md5_file, publish_atomically
from stn_repro.seeding import derive_seed

SVHN_SPLITS = ("train", "test", "extra")
"""The official format-1 splits."""

STORED_SPLITS = ("train", "val", "test", "extra")
"""The stored splits: ``val`` is held out of the official ``train``."""

MAX_DIGITS = 5
"""Positions per image; images with more digits are dropped (and counted), as Goodfellow et al. did."""

NO_DIGIT = 10
"""Label of an empty position (after the last digit); classes 0-9 are the digits."""

NUM_VALIDATION = 5_000
"""Images of the official ``train`` split held out as ``val``."""

OFFICIAL_COUNTS: dict[str, int] = {"train": 33_402, "test": 13_068, "extra": 202_353}
"""Images (PNGs and digitStruct entries) in each official format-1 split, checked by a real import."""

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
"""Serves ``train.tar.gz``, ``test.tar.gz`` and ``extra.tar.gz`` (format 1)."""

ARCHIVE_MD5: dict[str, str] = {
    "train": "a649f4cb15c35520e8a8c342d4c0005a",
    "test": "790d9c8d42f1fcbd219b59956c853a81",
    "extra": "606f41243d71ca4d5fe66dbaf1f02bee",
}
"""md5 of the format-1 archives. The SVHN site publishes no checksum; these are the values that two
independent public download scripts check against (the same in both: a torchvision-style ``SVHNFull``
dataset class and a ``HouseNumbers`` downloader), not an official statement, and not checked here (no
network). A mismatch is an error; an intact copy from elsewhere can still be imported by extracting it
into ``<split>/``: folders are checked by content (:data:`OFFICIAL_COUNTS`, every PNG, every box)."""

ARCHIVE_SHA256: dict[str, str] = {
    "train": "4b17bb33b6cd8f963493168f80143da956f28ec406cc12f8e5745a9f91a51898",
    "test": "57ac9ceb530e4aa85b55d991be8fc49c695b3d71c6f6a88afea86549efde7fb5",
}
"""sha256 of the train and test archives as the docTR library (mindee/doctr, ``doctr.datasets.SVHN``)
checks them after download; none is published for ``extra``."""

CROP_SCALE: dict[int, Fraction] = {64: Fraction(13, 10), 128: Fraction(13, 5)}
"""Side of the crop box over the side of the digits' union box, per stored image size. 64: Goodfellow's
30% expansion. 128: the 64 px box grown to twice its width and height about its centre (a choice; the
paper only says "more loosely"), so the digits have the same size in pixels in both sets and the 128 px
images show four times the area, the extra being background."""

SVHN_VERSION = 1
"""Bump whenever the import's output changes (crop recipe, layout): stored sets of another version are
rebuilt."""

SETS_DIR = "svhn_sets"
DOWNLOAD_DIR = "svhn"
SYNTHETIC_NAME = "synthetic-svhn"
SOURCE_ENV = "STN_SVHN_SOURCE"
DIGIT_STRUCT = "digitStruct.mat"
_BOX_FIELDS = ("left", "top", "width", "height")
_STRUCT_FIELDS = ("height", "label", "left", "top", "width")  # the order MATLAB writes them
_DIGIT_STRUCT_FIX = (
    "fix: replace it with an intact copy (re-extract the split's .tar.gz from the SVHN format-1 download, "
    "or delete the synthetic tree and rerun `make data-svhn-synthetic`)"
)
_SOURCE_HINT = (
    f"point --source or {SOURCE_ENV} at a folder holding train/, test/ (and extra/) extracted from the SVHN "
    f"format-1 download, or the archives train.tar.gz, test.tar.gz (extra.tar.gz) from {SVHN_URL}"
)
_DOWNLOAD_ATTEMPTS = 2
_CHECK_ROWS = 256  # rows per read when a stored set's checksum is verified without loading it whole


# --- digitStruct.mat ------------------------------------------------------------------------------------


@dataclass
class SvhnImage:
    """One image of a digitStruct: its PNG ``name``, ``boxes`` float64 ``[n, 4]`` as (left, top, width,
    height) in pixels and raw SVHN ``labels`` (1-9, and 10 for the digit 0), left to right."""

    name: str
    boxes: np.ndarray
    labels: list[int] = field(default_factory=list)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SvhnImage)
            and self.name == other.name
            and self.labels == other.labels
            and np.array_equal(np.asarray(self.boxes, float), np.asarray(other.boxes, float))
        )


def read_digit_struct(path: Path) -> list[SvhnImage]:
    """Every image listed in an SVHN ``digitStruct.mat`` (MATLAB v7.3, i.e. HDF5), in file order.

    **Convention**: ``/digitStruct/name`` and ``/digitStruct/bbox`` are ``[N, 1]`` datasets of object
    references. A name points at a ``uint16`` character dataset; a bbox points at a group with datasets
    ``height``, ``left``, ``top``, ``width`` and ``label`` that hold the value itself (shape ``[1, 1]``)
    for a one-digit image, and a column ``[n, 1]`` of references, each to a ``[1, 1]`` dataset, for
    ``n`` digits. Raises :class:`DataError` (naming the file, the image and the fix) for a missing,
    non-HDF5 or truncated file, missing keys, a label outside 1-10 or a box of zero or negative size.
    Uses h5py's low-level API: a few object references per digit make the high-level one slow.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SVHN digit file {path} is missing; {_DIGIT_STRUCT_FIX}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(
            f"{path} is not a readable HDF5 (MATLAB v7.3) file: not a digitStruct.mat, or truncated "
            f"({error}); {_DIGIT_STRUCT_FIX}"
        ) from None
    images: list[SvhnImage] = []
    where = "/digitStruct"
    try:
        with handle:
            for key in ("digitStruct/name", "digitStruct/bbox"):
                if key not in handle:
                    raise DataError(
                        f"{path} lacks /{key}: it is not an SVHN digitStruct.mat; {_DIGIT_STRUCT_FIX}"
                    )
            name_refs = handle["digitStruct/name"][()].reshape(-1)
            bbox_refs = handle["digitStruct/bbox"][()].reshape(-1)
            if len(name_refs) != len(bbox_refs):
                raise DataError(
                    f"{path} lists {len(name_refs)} names but {len(bbox_refs)} bboxes; {_DIGIT_STRUCT_FIX}"
                )
            fid = handle.id
            for index, (name_ref, bbox_ref) in enumerate(zip(name_refs, bbox_refs, strict=True)):
                where = f"image {index + 1}"
                codes = _read_ll(h5py.h5r.dereference(name_ref, fid), h5py.h5t.NATIVE_UINT16, np.uint16)
                name = "".join(map(chr, codes.reshape(-1)))
                where = f"image {index + 1} ({name})"
                images.append(_read_bbox(fid, h5py.h5r.dereference(bbox_ref, fid), name, path, where))
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
        raise DataError(
            f"{path} is unreadable at {where} ({type(error).__name__}: {error}): truncated or not an SVHN "
            f"digitStruct.mat; {_DIGIT_STRUCT_FIX}"
        ) from None
    return images


def _read_ll(dataset_id, memory_type, dtype) -> np.ndarray:
    """A whole dataset through the low-level API, converted to ``memory_type`` and ``dtype`` (``None``:
    h5py's conversion for ``dtype``, which object references need)."""
    if not isinstance(dataset_id, h5py.h5d.DatasetID):
        raise TypeError(f"expected a dataset, found {type(dataset_id).__name__}")
    out = np.empty(dataset_id.shape, dtype=dtype)
    dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, out, mtype=memory_type)
    return out


def _read_bbox(fid, group_id, name: str, path: Path, where: str) -> SvhnImage:
    if not isinstance(group_id, h5py.h5g.GroupID):
        raise DataError(f"{path}: the bbox of {where} is not a struct group; {_DIGIT_STRUCT_FIX}")
    values = {}
    for key in ("left", "top", "width", "height", "label"):
        if key.encode() not in group_id:
            raise DataError(f"{path}: the bbox of {where} lacks the field {key!r}; {_DIGIT_STRUCT_FIX}")
        dataset_id = h5py.h5o.open(group_id, key.encode())
        if isinstance(dataset_id, h5py.h5d.DatasetID) and dataset_id.get_type().equal(h5py.h5t.STD_REF_OBJ):
            refs = _read_ll(dataset_id, None, h5py.ref_dtype).reshape(-1)
            values[key] = [
                float(
                    _read_ll(h5py.h5r.dereference(ref, fid), h5py.h5t.NATIVE_DOUBLE, np.float64).reshape(-1)[
                        0
                    ]
                )
                for ref in refs
            ]
        else:
            values[key] = _read_ll(dataset_id, h5py.h5t.NATIVE_DOUBLE, np.float64).reshape(-1).tolist()
    count = len(values["label"])
    if count == 0 or any(len(values[key]) != count for key in _BOX_FIELDS):
        lengths = {key: len(value) for key, value in values.items()}
        raise DataError(
            f"{path}: the bbox fields of {where} disagree in length {lengths}; {_DIGIT_STRUCT_FIX}"
        )
    boxes = np.array([values[key] for key in _BOX_FIELDS], dtype=np.float64).T
    labels = []
    for label in values["label"]:
        if label != int(label) or not 1 <= label <= 10:
            raise DataError(
                f"{path}: {where} has label {label:g}, SVHN labels are 1-10 (10 = digit 0); {_DIGIT_STRUCT_FIX}"
            )
        labels.append(int(label))
    for k, (_, _, width, height) in enumerate(boxes):
        if not (width > 0 and height > 0):
            raise DataError(
                f"{path}: digit box {k + 1} of {where} has zero or negative size (width {width:g}, "
                f"height {height:g}); {_DIGIT_STRUCT_FIX}"
            )
    return SvhnImage(name=name, boxes=boxes, labels=labels)


def write_digit_struct(path: Path, images: Sequence[SvhnImage]) -> None:
    """Write ``images`` as an SVHN ``digitStruct.mat`` in MATLAB v7.3 layout, atomically.

    The layout :func:`read_digit_struct` reads, as MATLAB writes it: a 512-byte MAT-file header
    (user block), the struct ``/digitStruct`` with ``name`` and ``bbox`` reference columns ``[N, 1]``, the
    referenced objects in ``/#refs#``; names as ``uint16`` character arrays ``[len, 1]``; each bbox a
    struct group whose fields hold the value ``[1, 1]`` (float64) for one digit and a column of references
    to ``[1, 1]`` values for several; ``MATLAB_class`` attributes. Deterministic: the same images give
    the same bytes (no timestamps). Used by the tests' fixtures and :func:`make_synthetic_svhn_tree`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver="earliest", userblock_size=512) as handle:
            _MatWriter(handle).write(images)
        with open(tmp, "r+b") as raw:
            raw.write(_MAT_HEADER)
        publish_atomically(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _MatWriter:
    """MATLAB v7.3 objects through h5py's low-level API (the high-level one is several times slower)."""

    def __init__(self, handle: h5py.File):
        h5p, h5s = h5py.h5p, h5py.h5s
        self.dcpl = h5p.create(h5p.DATASET_CREATE)
        self.dcpl.set_obj_track_times(False)
        self.gcpl = h5p.create(h5p.GROUP_CREATE)
        self.gcpl.set_obj_track_times(False)
        self.scalar, self.one = h5s.create(h5s.SCALAR), h5s.create_simple((1, 1))
        self.string_types: dict[bytes, h5py.h5t.TypeID] = {}
        self.root = handle.id
        self.refs = self.group(self.root, b"#refs#")
        self.names = (_ref_name(i).encode() for i in itertools.count())

    def write(self, images: Sequence[SvhnImage]) -> None:
        name_refs = np.empty((len(images), 1), dtype=h5py.ref_dtype)
        bbox_refs = np.empty((len(images), 1), dtype=h5py.ref_dtype)
        for index, image in enumerate(images):
            boxes = np.asarray(image.boxes, dtype=np.float64).reshape(-1, 4)
            if len(boxes) != len(image.labels) or len(boxes) == 0:
                raise ValueError(f"{image.name}: {len(boxes)} boxes but {len(image.labels)} labels")
            codes = np.array([ord(c) for c in image.name], dtype=np.uint16).reshape(-1, 1)
            name_refs[index, 0] = self.referenced(codes, b"char")
            group_name = next(self.names)
            group = self.group(self.refs, group_name, b"struct")
            columns = {
                "left": boxes[:, 0],
                "top": boxes[:, 1],
                "width": boxes[:, 2],
                "height": boxes[:, 3],
                "label": np.asarray(image.labels, dtype=np.float64),
            }
            for key in _STRUCT_FIELDS:
                column = columns[key]
                if len(column) == 1:
                    self.dataset(group, key.encode(), column.reshape(1, 1), b"double")
                else:
                    refs = np.empty((len(column), 1), dtype=h5py.ref_dtype)
                    for k, number in enumerate(column):
                        refs[k, 0] = self.referenced(np.array([[number]]), b"double")
                    self.dataset(group, key.encode(), refs, b"cell")
            bbox_refs[index, 0] = h5py.h5r.create(self.refs, group_name, h5py.h5r.OBJECT)
        struct_group = self.group(self.root, b"digitStruct", b"struct")
        self.dataset(struct_group, b"name", name_refs, b"cell")
        self.dataset(struct_group, b"bbox", bbox_refs, b"cell")

    def group(self, parent, name: bytes, matlab_class: bytes | None = None):
        group = h5py.h5g.create(parent, name, gcpl=self.gcpl)
        if matlab_class is not None:
            self.attribute(group, matlab_class)
        return group

    def dataset(self, parent, name: bytes, data: np.ndarray, matlab_class: bytes) -> None:
        file_type = {
            np.dtype(np.float64): h5py.h5t.IEEE_F64LE,
            np.dtype(np.uint16): h5py.h5t.STD_U16LE,
        }.get(data.dtype, h5py.h5t.STD_REF_OBJ)
        space = self.one if data.shape == (1, 1) else h5py.h5s.create_simple(data.shape)
        dataset = h5py.h5d.create(parent, name, file_type, space, dcpl=self.dcpl)
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
        self.attribute(dataset, matlab_class)
        if matlab_class == b"char":
            attribute = h5py.h5a.create(dataset, b"MATLAB_int_decode", h5py.h5t.STD_I32LE, self.scalar)
            attribute.write(np.array(2, dtype=np.int32))

    def referenced(self, data: np.ndarray, matlab_class: bytes) -> h5py.Reference:
        name = next(self.names)
        self.dataset(self.refs, name, data, matlab_class)
        return h5py.h5r.create(self.refs, name, h5py.h5r.OBJECT)

    def attribute(self, target, matlab_class: bytes) -> None:
        if matlab_class not in self.string_types:
            string_type = h5py.h5t.C_S1.copy()
            string_type.set_size(len(matlab_class))
            string_type.set_strpad(h5py.h5t.STR_NULLPAD)
            self.string_types[matlab_class] = string_type
        attribute = h5py.h5a.create(target, b"MATLAB_class", self.string_types[matlab_class], self.scalar)
        attribute.write(np.array(matlab_class, dtype=f"S{len(matlab_class)}"))


# The MAT-file v7.3 header: 116 bytes of text, 8 bytes of subsystem offset, version 0x0200, "IM" (little
# endian); MATLAB pads it to the 512-byte HDF5 user block.
_MAT_HEADER = (
    (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: stn-repro write_digit_struct HDF5 schema 1.00 ."
    ).ljust(116, b" ")
    + b"\0" * 8
    + struct.pack("<H", 0x0200)
    + b"IM"
)
_MAT_HEADER = _MAT_HEADER.ljust(512, b"\0")
_REF_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _ref_name(index: int) -> str:
    """MATLAB-style names of referenced objects: a, b, ..., Z, ba, bb, ..."""
    letters = ""
    while True:
        index, rest = divmod(index, len(_REF_LETTERS))
        letters = _REF_LETTERS[rest] + letters
        if index == 0:
            return letters


# --- the crop recipe ------------------------------------------------------------------------------------


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


# --- importing ------------------------------------------------------------------------------------------


def svhn_set_path(name: str, size: int, split: str, data_dir: Path | None = None) -> Path:
    """Where a stored SVHN set lives: ``<data_dir>/svhn_sets/<name>_<size>px_<split>.h5``."""
    if split not in STORED_SPLITS:
        raise ValueError(f"unknown SVHN split {split!r}; known: {', '.join(STORED_SPLITS)}")
    root = Path(data_dir if data_dir is not None else default_data_dir())
    return root / SETS_DIR / f"{name}_{int(size)}px_{split}.h5"


def _fix(name: str, split: str = "train") -> str:
    if SYNTHETIC_NAME in name:
        return "fix: run `make data-svhn-synthetic` (after `make data-mnist`)"
    target = "make data-svhn SVHN_ARGS=--extra" if split == "extra" else "make data-svhn"
    return (
        f"fix: run `{target}` (offline: `{SOURCE_ENV}=/folder/with/the/svhn/archives {target}`; "
        "it rebuilds missing, corrupt and outdated sets)"
    )


def load_svhn_set(name: str, size: int, split: str, data_dir: Path | None = None) -> dict:
    """A stored SVHN set, verified (generator version and sha256 of images and labels): ``images`` uint8
    ``[N, 3, S, S]``, ``labels`` int64 ``[N, 5]``, ``length`` int64 ``[N]`` (tensors) and ``names`` (a
    numpy bytes array: torch holds no strings). A missing, unreadable, outdated or corrupt file raises
    :class:`DataError` naming it and the ``make`` target that rebuilds it."""
    path = svhn_set_path(name, size, split, data_dir)
    data, _ = read_set(path, verify=True, version=SVHN_VERSION, fix=_fix(name, split))
    if "length" not in data or "names" not in data:
        raise DataError(f"stored set {path} lacks length or names; {_fix(name, split)}")
    return data


def read_svhn_attrs(name: str, size: int, split: str, data_dir: Path | None = None) -> dict:
    """A stored SVHN set's attributes (seed, size, source, counts, ...), without loading its arrays."""
    path = svhn_set_path(name, size, split, data_dir)
    if not path.is_file():
        raise DataError(f"stored set {path} is missing; {_fix(name, split)}")
    with h5py.File(path, "r") as handle:
        return {
            key: value.item() if isinstance(value, np.generic) else value
            for key, value in handle.attrs.items()
        }


@dataclass
class _Split:
    split: str
    folder: Path
    origin: Path
    images: list[SvhnImage] = field(default_factory=list)
    dropped: int = 0


def import_svhn(
    source: Path,
    data_dir: Path | None = None,
    *,
    splits: Sequence[str] = ("train", "test"),
    sizes: Sequence[int] = (64, 128),
    name: str = "svhn",
    seed: int = DEFAULT_SEED,
    num_validation: int = NUM_VALIDATION,
    expect_official_counts: bool = True,
    description: str | None = None,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Import SVHN format 1 from ``source`` into stored sets; returns their paths.

    ``source`` holds, per split, the extracted folder ``<split>/`` (PNGs and ``digitStruct.mat``) or the
    archive ``<split>.tar.gz`` (extracted into a temporary folder next to the output, removed afterwards).
    Writes ``<data_dir>/svhn_sets/<name>_<size>px_<split>.h5`` per size and split; the official ``train``
    split becomes ``train`` and ``val`` (``num_validation`` images, a fixed choice seeded from ``seed``).
    Images with more than :data:`MAX_DIGITS` digits are dropped and counted (attribute
    ``dropped_over_5_digits``). Crops: :func:`crop_and_resize`.

    Idempotent: a split whose files all verify and were made with the same name, seed, sizes,
    ``num_validation`` and ``description`` is skipped without reading its source. Everything is checked
    (digitStruct, every PNG's presence and size, every box against its image) before anything is
    written; each file is written to a temporary name and renamed, so no partial file is left where a
    later run would trust it. With ``expect_official_counts`` (a real import) the image counts must equal
    :data:`OFFICIAL_COUNTS` and archives must match :data:`ARCHIVE_MD5`. ``workers`` threads decode and
    crop. Memory: one split's crops at every size at a time, plus a copy while the checksum is taken
    (``extra`` at 64 and 128 px: about 25 GB). Raises :class:`DataError` naming the file and the fix.
    """
    splits, sizes = tuple(splits), tuple(int(s) for s in sizes)
    for split in splits:
        if split not in SVHN_SPLITS:
            raise ValueError(f"unknown SVHN split {split!r}; known: {', '.join(SVHN_SPLITS)}")
    for size in sizes:
        if size not in CROP_SCALE:
            raise ValueError(f"no crop recipe for {size} px; known sizes: {', '.join(map(str, CROP_SCALE))}")
    synthetic = SYNTHETIC_NAME in name
    if description is None:
        description = "synthetic SVHN-format tree" if synthetic else f"SVHN format 1 ({SVHN_URL})"
    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    sets_dir = data_dir / SETS_DIR
    source = Path(source)

    def expected(split: str, stored: str, size: int) -> dict:
        attrs = {"set_name": name, "split": stored, "size": size, "seed": seed, "source": description}
        if split == "train":
            attrs["num_validation"] = num_validation
        return attrs

    outputs = {split: [(s, size) for s in _stored_splits(split) for size in sizes] for split in splits}
    todo = {}
    paths = []
    for split in splits:
        pending = []
        for stored, size in outputs[split]:
            path = svhn_set_path(name, size, stored, data_dir)
            paths.append(path)
            if _is_current(path, expected(split, stored, size)):
                log(f"  {path.name}: up to date")
            else:
                pending.append((stored, size))
        if pending:
            todo[split] = pending
    if not todo:
        return paths
    if not source.is_dir():
        raise DataError(f"SVHN source folder {source} does not exist or is not a folder; fix: {_SOURCE_HINT}")
    sets_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=sets_dir, prefix=".extract-"))
    try:
        jobs = [_locate(source, split, scratch, expect_official_counts, log) for split in todo]
        for job in jobs:  # check everything before writing anything
            _check_split(job, expect_official_counts)
            if job.dropped:
                log(f"  {job.origin}: dropped {job.dropped} images with more than {MAX_DIGITS} digits")
        for job in jobs:
            if job.split == "train" and not 0 < num_validation < len(job.images):
                raise DataError(
                    f"{job.origin} has {len(job.images)} usable images, too few to hold out "
                    f"num_validation={num_validation}; fix: import a complete train split"
                )
        for job in jobs:
            pending = todo[job.split]
            crops = _crop_all(job, sorted({size for _, size in pending}), workers)
            labels = np.stack([encode_labels(image.labels) for image in job.images])
            length = np.array([len(image.labels) for image in job.images], dtype=np.int64)
            names = np.array([image.name.encode() for image in job.images])
            parts: dict[str, np.ndarray | slice] = {job.split: slice(None)}  # a view: no copy of the images
            if job.split == "train":
                val = validation_indices(
                    derive_seed(seed, "svhn-validation"), len(job.images), num_validation
                ).numpy()
                keep = np.ones(len(job.images), dtype=bool)
                keep[val] = False
                parts = {"train": np.flatnonzero(keep), "val": val}
            for stored, size in pending:
                index = parts[stored]
                data = {
                    "images": torch.from_numpy(crops[size][index]),
                    "labels": torch.from_numpy(labels[index]),
                    "length": torch.from_numpy(length[index]),
                    "names": names[index],
                }
                attrs = {
                    **expected(job.split, stored, size),
                    "source_split": job.split,
                    "source_path": str(job.origin),
                    "source_images": len(job.images) + job.dropped,
                    "dropped_over_5_digits": job.dropped,
                    "synthetic": synthetic,
                    "crop": f"union of the digit boxes x {CROP_SCALE[size]} about its centre, "
                    f"outside = black, bilinear resize to {size}x{size}",
                }
                path = svhn_set_path(name, size, stored, data_dir)
                write_set(path, data, attrs, version=SVHN_VERSION)
                log(f"  {path.name}: wrote {tuple(data['images'].shape)}")
            del crops, data  # one split's images in memory at a time
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return paths


def _stored_splits(split: str) -> tuple[str, ...]:
    return ("train", "val") if split == "train" else (split,)


def _is_current(path: Path, expected: dict) -> bool:
    """The file verifies (version and sha256, read in chunks) and was made with ``expected``'s attributes."""
    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
            if attrs.get("generator_version") != SVHN_VERSION or any(
                _plain(attrs.get(key)) != value for key, value in expected.items()
            ):
                return False
            return _stored_checksum(handle) == attrs.get("sha256")
    except (OSError, KeyError, ValueError):
        return False


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _stored_checksum(handle: h5py.File) -> str:
    """:func:`~stn_repro.data.sets.set_checksum` of a stored set, reading its images a chunk at a time."""
    images = handle["images"]
    labels = np.ascontiguousarray(handle["labels"][()].astype("<i8"))
    digest = hashlib.sha256()
    digest.update(repr((images.dtype.str, images.shape)).encode())
    for start in range(0, len(images), _CHECK_ROWS):
        digest.update(np.ascontiguousarray(images[start : start + _CHECK_ROWS]).tobytes())
    digest.update(repr((labels.dtype.str, labels.shape)).encode())
    digest.update(labels.tobytes())
    return digest.hexdigest()


def _locate(source: Path, split: str, scratch: Path, official: bool, log: Callable[[str], None]) -> _Split:
    folder, archive = source / split, source / f"{split}.tar.gz"
    if (folder / DIGIT_STRUCT).is_file() or (folder.is_dir() and not archive.is_file()):
        return _Split(split, folder, folder)
    if not archive.is_file():
        raise DataError(
            f"SVHN split {split!r} not found in {source}: expected the folder {folder} (PNGs and "
            f"{DIGIT_STRUCT}) or the archive {archive}; fix: {_SOURCE_HINT}"
        )
    if official:
        log(f"  {archive}: checking md5")
        _check_archive_hash(archive, split)
    log(f"  {archive}: extracting")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"SVHN archive {archive} is corrupt or truncated ({error}); fix: delete it and copy or "
            f"download it again ({SVHN_URL}{split}.tar.gz)"
        ) from None
    extracted = scratch / split
    if not (extracted / DIGIT_STRUCT).is_file():
        raise DataError(
            f"SVHN archive {archive} holds no {split}/{DIGIT_STRUCT}: not an SVHN format-1 archive; fix: "
            f"replace it with {SVHN_URL}{split}.tar.gz"
        )
    return _Split(split, extracted, archive)


def _check_archive_hash(archive: Path, split: str) -> None:
    problems = _archive_hash_problems(archive, split)
    if problems:
        raise DataError(
            f"SVHN archive {archive} is not the official {split}.tar.gz ({problems}); fix: delete it and "
            f"download {SVHN_URL}{split}.tar.gz again (or extract an intact copy into {split}/ there)"
        )


def _archive_hash_problems(archive: Path, split: str) -> str:
    """What differs from :data:`ARCHIVE_MD5` and :data:`ARCHIVE_SHA256` (empty: nothing)."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(archive, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    problems = []
    if md5.hexdigest() != ARCHIVE_MD5[split]:
        problems.append(f"md5 {md5.hexdigest()}, expected {ARCHIVE_MD5[split]}")
    if split in ARCHIVE_SHA256 and sha256.hexdigest() != ARCHIVE_SHA256[split]:
        problems.append(f"sha256 {sha256.hexdigest()}, expected {ARCHIVE_SHA256[split]}")
    return "; ".join(problems)


def _check_split(job: _Split, official: bool) -> None:
    """Read the digitStruct, drop images with too many digits, check every PNG and box (fills ``job``)."""
    struct_path = job.folder / DIGIT_STRUCT
    records = read_digit_struct(struct_path)
    if official:
        pngs = sum(1 for _ in job.folder.glob("*.png"))
        expected = OFFICIAL_COUNTS[job.split]
        if len(records) != expected or pngs != expected:
            raise DataError(
                f"{job.origin} has {len(records)} images in {DIGIT_STRUCT} and {pngs} PNGs, the official "
                f"{job.split} split has {expected}; fix: replace it with an intact copy of "
                f"{SVHN_URL}{job.split}.tar.gz"
            )
    kept = [record for record in records if len(record.labels) <= MAX_DIGITS]
    for record in kept:
        png = job.folder / record.name
        if not png.is_file():
            raise DataError(
                f"SVHN image {png} is missing (listed in {struct_path}); fix: replace {job.origin} with "
                "an intact copy of the split (all PNGs with their digitStruct.mat)"
            )
        try:
            with Image.open(png) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(
                f"SVHN image {png} is not a readable image ({error}); fix: replace {job.origin} with an "
                "intact copy of the split"
            ) from None
        for k, (left, top, box_w, box_h) in enumerate(record.boxes):
            if left + box_w <= 0 or top + box_h <= 0 or left >= width or top >= height:
                raise DataError(
                    f"{struct_path}: digit box {k + 1} of {record.name} (left {left:g}, top {top:g}, width "
                    f"{box_w:g}, height {box_h:g}) lies entirely outside the {width}x{height} image; "
                    f"{_DIGIT_STRUCT_FIX}"
                )
    job.images, job.dropped = kept, len(records) - len(kept)


def _crop_all(job: _Split, sizes: list[int], workers: int) -> dict[int, np.ndarray]:
    out = {size: np.empty((len(job.images), 3, size, size), dtype=np.uint8) for size in sizes}

    def one(index: int) -> None:
        record = job.images[index]
        png = job.folder / record.name
        try:
            with Image.open(png) as image:
                image = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(
                f"SVHN image {png} cannot be decoded ({error}); fix: replace {job.origin} with an intact "
                "copy of the split"
            ) from None
        for size in sizes:
            out[size][index] = crop_and_resize(image, record.boxes, size)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, range(len(job.images)), chunksize=64):
                pass
    else:
        for index in range(len(job.images)):
            one(index)
    return out


# --- downloading ----------------------------------------------------------------------------------------


def download_svhn(data_dir: Path | None = None, splits: Sequence[str] = ("train", "test")) -> Path:
    """Download the format-1 archives of ``splits`` into ``<data_dir>/svhn/`` and return that folder (an
    ``import_svhn`` source). Network needed; about 0.4 GB (train), 0.3 GB (test), 1.3 GB (extra).

    Verification: each archive must match :data:`ARCHIVE_MD5` (and :data:`ARCHIVE_SHA256` for train and
    test) before it is renamed into place; the SVHN site publishes no checksum, so these are the values
    public download scripts check (see there). :func:`import_svhn` then checks the content as well:
    ``digitStruct.mat`` present and readable, every PNG present, image counts equal to
    :data:`OFFICIAL_COUNTS`. An archive already present with the right md5 is not downloaded again.
    """
    folder = Path(data_dir if data_dir is not None else default_data_dir()) / DOWNLOAD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        if split not in SVHN_SPLITS:
            raise ValueError(f"unknown SVHN split {split!r}; known: {', '.join(SVHN_SPLITS)}")
        path = folder / f"{split}.tar.gz"
        if path.is_file() and md5_file(path) == ARCHIVE_MD5[split]:
            continue
        _download_archive(f"{SVHN_URL}{split}.tar.gz", path, split)
    return folder


def _download_archive(url: str, path: Path, split: str) -> None:
    download_verified(
        [url],
        path,
        lambda archive: _archive_hash_problems(archive, split) or None,
        attempts=_DOWNLOAD_ATTEMPTS,
        corrupt_fix=(
            f"retry, or download it elsewhere, check it, put it in a folder and set "
            f"{SOURCE_ENV}=/path/to/that/folder (or pass --source)"
        ),
        offline_fix=(
            f"download it elsewhere, put it in a folder and set {SOURCE_ENV}=/path/to/that/folder "
            "(or pass --source)"
        ),
    )


# --- training data --------------------------------------------------------------------------------------


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


class SvhnStream(SeededBatchStream):
    """Training batches of a stored SVHN set with Goodfellow's random crops, the interface of
    :class:`~stn_repro.data.sets.DistortedStream`.

    **Convention**: ``images_uint8 [N, 3, S, S]``, ``labels [N, 5]``; :meth:`next_batch` returns
    ``x [batch_size, 3, crop, crop]`` float32 in ``[0, 1]`` on ``device`` and ``y [batch_size, 5]`` int64
    on ``device``. The images go through seeded per-epoch permutations (a batch that reaches the end of an
    epoch is completed from the next); each image of a batch gets a crop position drawn uniformly from a
    CPU generator seeded from ``seed`` (``crop=None``: the whole image). The images stay on ``device`` as
    uint8. ``state_dict()`` / ``load_state_dict()`` (:class:`~stn_repro.data.sets.SeededBatchStream`'s)
    capture the position and the generator, so a resumed stream continues with exactly the batches it would
    have produced.
    """

    kind = "SvhnStream"
    state_fields = ("kind", "seed", "num_images", "batch_size", "crop")
    checked_fields = ("kind", "seed", "num_images", "crop")

    def __init__(
        self,
        images_uint8: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device="cpu",
        crop: int | None = 54,
    ):
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [N, 3, S, S], got {images_uint8.dtype} {tuple(images_uint8.shape)}"
            )
        if labels.shape != (len(images_uint8), MAX_DIGITS):
            raise ValueError(
                f"labels must be [N, {MAX_DIGITS}] with N={len(images_uint8)}, got {tuple(labels.shape)}"
            )
        super().__init__(labels, batch_size, seed, device)
        if crop is not None and not 0 < crop <= min(images_uint8.shape[-2:]):
            raise ValueError(f"crop {crop} does not fit images of {tuple(images_uint8.shape[-2:])}")
        self.crop = crop
        self.image_size = images_uint8.shape[-1]
        self.images = images_uint8.to(self.device)
        self._generator = self._derived_generator("svhn-crops")
        if crop is not None:
            self._span = torch.arange(crop, device=self.device)
            self._channels = torch.arange(3, device=self.device).view(1, 3, 1, 1)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        index = self._order.take(self.batch_size)
        if self.crop is None:
            images = self.images[index]
        else:
            height, width = self.images.shape[-2:]
            offset_y = torch.randint(0, height - self.crop + 1, (len(index),), generator=self._generator)
            offset_x = torch.randint(0, width - self.crop + 1, (len(index),), generator=self._generator)
            rows = offset_y.to(self.device).view(-1, 1, 1, 1) + self._span.view(1, 1, -1, 1)
            cols = offset_x.to(self.device).view(-1, 1, 1, 1) + self._span.view(1, 1, 1, -1)
            # One gather straight from the stored images: [B, 3, crop, crop], contiguous.
            images = self.images[index.view(-1, 1, 1, 1), self._channels, rows, cols]
        return images.float().div_(255.0), self.labels[index]


# --- synthetic stand-in ---------------------------------------------------------------------------------

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
            "generator": "stn_repro.data.svhn.make_synthetic_svhn_tree",
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
            os.chmod(tmp, 0o777 & ~_umask())
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"  {folder}: wrote {count} synthetic images")
    return dest


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


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
    from .mnist import load_mnist

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
