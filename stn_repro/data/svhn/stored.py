"""Stored, checksummed SVHN sets: ``<data_dir>/svhn_sets/<name>_<size>px_<split>.h5``.

Each holds ``images`` uint8 ``[N, 3, S, S]`` (RGB), ``labels`` int64 ``[N, 5]`` (digits 0-9,
:data:`~stn_repro.data.svhn.crops.NO_DIGIT` after the last), ``length`` int64 ``[N]`` and ``names`` (the source
PNG names); :func:`load_svhn_set` verifies version and checksum. Split ``val`` is :data:`NUM_VALIDATION`
images of the official ``train`` split (a fixed seeded choice), removed from ``train``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np

from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.sets import read_set

SOURCE_ENV = "STN_SVHN_SOURCE"
SVHN_SPLITS = ("train", "test", "extra")
"""The official format-1 splits."""


STORED_SPLITS = ("train", "val", "test", "extra")
"""The stored splits: ``val`` is held out of the official ``train``."""


NUM_VALIDATION = 5_000
"""Images of the official ``train`` split held out as ``val``."""


SVHN_VERSION = 1
"""Bump whenever the import's output changes (crop recipe, layout): stored sets of another version are
rebuilt."""


SETS_DIR = "svhn_sets"


SYNTHETIC_NAME = "synthetic-svhn"


_CHECK_ROWS = 256  # rows per read when a stored set's checksum is verified without loading it whole


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
