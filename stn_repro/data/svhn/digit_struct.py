"""SVHN's ``digitStruct.mat`` (MATLAB v7.3, i.e. HDF5): read as the official files are laid out, and
written in the same layout (the synthetic stand-in and the tests' fixtures).

**Convention**: boxes are ``(left, top, width, height)`` in pixels of the source image, as SVHN stores them;
raw labels are 1-9 and 10 for the digit 0, left to right.
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from stn_repro.data.files import DataError
from stn_repro.io import publish_atomically

DIGIT_STRUCT = "digitStruct.mat"


_BOX_FIELDS = ("left", "top", "width", "height")


_STRUCT_FIELDS = ("height", "label", "left", "top", "width")  # the order MATLAB writes them


_DIGIT_STRUCT_FIX = (
    "fix: replace it with an intact copy (re-extract the split's .tar.gz from the SVHN format-1 download, "
    "or delete the synthetic tree and rerun `make data-svhn-synthetic`)"
)


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
