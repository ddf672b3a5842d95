"""Fixed, checksummed distorted-MNIST sets (HDF5): generated once, stored, verified when read.

- Stored sets: ``<data_dir>/mnist_sets/<set>_<split>.h5``, one per set and split. ``test`` distorts the
  official 10k test digits, ``val`` the 5k training digits of :func:`validation_indices`, each with a fixed
  seed, so every model is scored on the same images (spec Sect. 2). Every file carries the generator
  version, its seed and a sha256 of its images and labels, and :func:`load_set` checks all three.
- Training data are streams, not stored sets: :mod:`stn_repro.data.streams`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.mnist import NUM_TRAIN, MnistArrays, load_mnist
from stn_repro.io import publish_atomically
from stn_repro.seeding import derive_seed

from .distortions import (
    DISTORTED_SET_NAMES,
    addition_pairs,
    colocalisation,
    distort,
)

GENERATOR_VERSION = 3
"""Bump whenever a generator's output changes: stored sets of another version are rebuilt. 3: stored sets
warped in float64, the same bytes on every x86 CPU with AVX2 or AVX-512 (:data:`STORED_SET_DTYPE`); the
same draws as 2, one grey level apart in 68-228 pixels of each 10k test set."""

DEFAULT_SEED = 2015
"""Base seed of the stored sets; each set and split derives its own seed from it (:func:`derive_seed`)."""

NUM_VALIDATION = 5_000
SPLITS = ("test", "val")
EXTRA_SETS = ("addition", "coloc", "coloc_tc")
"""Sets in their own files: MNIST addition (spec Sect. 3) and co-localisation without and with clutter
(Sect. 4). Their splits: :data:`EXTRA_SPLITS`."""
EXTRA_SPLITS = {"addition": SPLITS, "coloc": ("test",), "coloc_tc": ("test",)}
"""The stored splits of each of :data:`EXTRA_SETS`: addition has a ``val`` set (pairs of the validation
digits) for runs that hold them out; co-localisation is test-only."""
SETS_DIR = "mnist_sets"
_CHUNK_ROWS = 256  # HDF5 chunk: a fixed layout (byte-identical files) and cheap partial reads
_FIX = "fix: run `make data-mnist` (it rebuilds missing, corrupt and outdated sets)"


def validation_indices(
    seed: int = 0, num_train: int = NUM_TRAIN, num_validation: int = NUM_VALIDATION
) -> Tensor:
    """The training-digit indices held out for validation (5,000 of MNIST's 60,000), sorted, int64.

    A fixed seeded choice: the same indices on every machine and in every run.
    """
    if not 0 < num_validation < num_train:
        raise ValueError(f"need 0 < num_validation < num_train, got {num_validation} and {num_train}")
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
    return order[:num_validation].sort().values


def train_indices(
    hold_out_validation: bool, seed: int = 0, num_train: int = NUM_TRAIN, num_validation: int = NUM_VALIDATION
) -> Tensor:
    """Training-digit indices, sorted: all of them, or those outside :func:`validation_indices`."""
    if not hold_out_validation:
        return torch.arange(num_train)
    keep = torch.ones(num_train, dtype=torch.bool)
    keep[validation_indices(seed, num_train, num_validation)] = False
    return keep.nonzero().squeeze(1)


# --- generating ------------------------------------------------------------------------------------------


def generate_set(
    set_name: str,
    images_uint8: Tensor,
    labels: Tensor,
    seed: int,
    clutter_source: Tensor | None = None,
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """Distort every digit once: ``images`` uint8 ``[N, 1, S, S]``, ``labels`` int64 ``[N]`` and every
    per-sample parameter of :func:`~stn_repro.data.distortions.distort` (CPU tensors).

    Deterministic in ``(seed, batch_size)``: one CPU generator seeded with ``seed`` draws the parameters
    batch after batch. Works through ``batch_size`` digits at a time, so memory stays small.
    """
    if set_name not in DISTORTED_SET_NAMES:
        raise ValueError(f"unknown distorted-MNIST set {set_name!r}; known: {', '.join(DISTORTED_SET_NAMES)}")
    _check_uint8_digits(images_uint8, labels)
    generator = torch.Generator().manual_seed(seed)

    def one_batch(start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        digits = _as_float(images_uint8[start:stop], STORED_SET_DTYPE)
        return distort(set_name, digits, generator, clutter_source)

    data = _generate_in_batches(len(images_uint8), batch_size, one_batch)
    data["labels"] = labels.long().clone()
    return data


def generate_addition_set(
    images_uint8: Tensor, labels: Tensor, seed: int, batch_size: int = 1024
) -> dict[str, Tensor]:
    """MNIST addition pairs: digit ``i`` with digit ``partner[i]`` of a seeded permutation, each channel RTS.

    Returns ``images`` uint8 ``[N, 2, 42, 42]``, ``labels`` (the sum, 0..18), ``digit_labels [N, 2]``,
    ``digit_indices [N, 2]`` and the RTS parameters of :func:`~stn_repro.data.distortions.addition_pairs`.
    """
    _check_uint8_digits(images_uint8, labels)
    generator = torch.Generator().manual_seed(seed)
    count = len(images_uint8)
    pairs = torch.stack([torch.arange(count), torch.randperm(count, generator=generator)], dim=1)

    def one_batch(start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        chunk = pairs[start:stop]
        return addition_pairs(
            _as_float(images_uint8[chunk[:, 0]], STORED_SET_DTYPE),
            _as_float(images_uint8[chunk[:, 1]], STORED_SET_DTYPE),
            generator,
        )

    data = _generate_in_batches(count, batch_size, one_batch)
    data["digit_indices"] = pairs
    data["digit_labels"] = labels.long()[pairs]
    data["labels"] = data["digit_labels"].sum(dim=1)
    return data


def generate_colocalisation_set(
    images_uint8: Tensor,
    labels: Tensor,
    seed: int,
    clutter_source: Tensor | None = None,
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """Co-localisation images ``[N, 1, 84, 84]`` uint8 with ``boxes [N, 4]`` (x0, y0, x1, y1 px), the digit
    class as ``labels`` (the experiment optimises one class at a time), and the placement parameters."""
    _check_uint8_digits(images_uint8, labels)
    generator = torch.Generator().manual_seed(seed)

    def one_batch(start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        digits = _as_float(images_uint8[start:stop], STORED_SET_DTYPE)
        images, boxes, params = colocalisation(digits, generator, clutter_source)
        return images, {"boxes": boxes, **params}

    data = _generate_in_batches(len(images_uint8), batch_size, one_batch)
    data["labels"] = labels.long().clone()
    return data


def _generate_in_batches(
    count: int, batch_size: int, one_batch: Callable[[int, int], tuple[Tensor, dict[str, Tensor]]]
) -> dict[str, Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    images, params = [], {}
    for start in range(0, count, batch_size):
        batch_images, batch_params = one_batch(start, min(start + batch_size, count))
        # The images are already on 8-bit levels, so this conversion is exact.
        images.append(batch_images.mul(255.0).round().to(torch.uint8).cpu())
        for key, value in batch_params.items():
            params.setdefault(key, []).append(value)
    return {"images": torch.cat(images), **{key: torch.cat(values) for key, values in params.items()}}


def _as_float(images_uint8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return images_uint8.unsqueeze(1).to(dtype).div(255.0)


# Stored sets are warped in float64, so that their bytes do not depend on the CPU. In float32 the sampling
# grid comes from matrix kernels (MKL, oneDNN) whose rounding differs between CPUs, and a pixel within a
# float32 rounding error of a half grey level rounds the other way on another machine: a few pixels of the
# R, RTS, P, E and addition sets did (the records' test-set checksums, generator version 2). In float64 a
# pixel would have to lie within about 1e-12 of a half level. One CPU dependence is left, on purpose: the P
# and E offsets are float32 ``randn`` draws, whose vectorised path gives the same numbers under AVX2 and
# AVX-512 but not on a CPU without AVX2 (torch's plain kernels), where a P or E set can come out a few
# pixels apart and the tables flag it. Drawing them in float64 would make the sets other samples
# altogether, and every P and E number so far would move by its sampling error (up to 0.2 points).
STORED_SET_DTYPE = torch.float64


def _check_uint8_digits(images_uint8: Tensor, labels: Tensor) -> None:
    if (
        images_uint8.dtype != torch.uint8
        or images_uint8.dim() != 3
        or tuple(images_uint8.shape[1:]) != (28, 28)
    ):
        raise ValueError(
            f"digits must be uint8 [N, 28, 28], got {images_uint8.dtype} {tuple(images_uint8.shape)}"
        )
    if labels.shape != images_uint8.shape[:1]:
        raise ValueError(f"labels must be [N] with N={len(images_uint8)}, got {tuple(labels.shape)}")


# --- storing ---------------------------------------------------------------------------------------------


def set_checksum(images: Tensor, labels: Tensor) -> str:
    """sha256 of a set's images (uint8) and labels (int64, little-endian), shapes included."""
    digest = hashlib.sha256()
    for array in (images.cpu().numpy(), labels.cpu().numpy().astype("<i8")):
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def summarise_test_set(source: str, images: Tensor, labels: Tensor) -> dict[str, Any]:
    """What a run record says of the test set it was scored on (its ``test_set``): the source (``mnist`` or
    ``synthetic``), size, :func:`set_checksum` and generator version. ``make table`` compares the checksum
    with today's stored set (:func:`stored_set_checksum`), as :func:`scored_on` does for given arrays."""
    return {
        "source": source,
        "size": int(labels.numel()),
        "sha256": set_checksum(images, labels),
        "generator_version": GENERATOR_VERSION,
    }


def write_set(
    path: Path, data: dict[str, Tensor | np.ndarray], attrs: dict, version: int = GENERATOR_VERSION
) -> None:
    """Write a set to HDF5 atomically (temporary file + rename); the same inputs give the same bytes.

    ``data`` needs ``images`` (uint8) and ``labels``; every entry (a tensor, or a numpy array such as
    fixed-length bytes) becomes a gzip-compressed dataset with a fixed chunk layout and no timestamps.
    ``attrs`` (it must name ``set_name`` and ``seed``) are stored beside ``generator_version`` (``version``:
    :data:`GENERATOR_VERSION` for the MNIST sets, another family passes its own) and ``sha256``
    (:func:`set_checksum`).
    """
    path = Path(path)
    missing = {"images", "labels"} - set(data) or {"set_name", "seed"} - set(attrs)
    if missing:
        raise ValueError(
            f"write_set needs data images/labels and attrs set_name/seed; missing {sorted(missing)}"
        )
    if data["images"].dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {data['images'].dtype}")
    all_attrs = {
        **attrs,
        "generator_version": version,
        "sha256": set_checksum(data["images"], data["labels"]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # libver "earliest" and track_times=False keep the layout version and drop the only varying bytes
        # (object timestamps); datasets and attributes go in sorted order.
        with h5py.File(tmp, "w", libver="earliest") as handle:
            for name in sorted(data):
                value = data[name]
                array = (
                    value.detach().cpu().contiguous().numpy()
                    if isinstance(value, Tensor)
                    else np.ascontiguousarray(value)
                )
                handle.create_dataset(
                    name,
                    data=array,
                    chunks=(max(1, min(len(array), _CHUNK_ROWS)), *array.shape[1:]),
                    compression="gzip",
                    compression_opts=4,
                    track_times=False,
                )
            for key in sorted(all_attrs):
                handle.attrs[key] = all_attrs[key]
        publish_atomically(tmp, path)
    except OSError as error:  # h5py reports a full disk as an OSError, not always with its errno
        Path(tmp).unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT) or shutil.disk_usage(path.parent).free < (64 << 20):
            raise DataError(
                f"no space left on device writing {path} (the sets written before it are kept; {path.name} "
                "was not replaced); fix: free space there, or point STN_DATA at another disk, then run "
                "`make data-mnist` again: it keeps what is current and writes the rest"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_path(set_name: str, split: str = "test", data_dir: Path | None = None) -> Path:
    """Where a stored set lives: ``<data_dir>/mnist_sets/<set_name>_<split>.h5``."""
    known = (*DISTORTED_SET_NAMES, *EXTRA_SETS)
    if set_name not in known:
        raise ValueError(f"unknown stored set {set_name!r}; known: {', '.join(known)}")
    splits = SPLITS if set_name in DISTORTED_SET_NAMES else EXTRA_SPLITS[set_name]
    if split not in splits:
        raise ValueError(f"set {set_name!r} has no split {split!r}; it has: {', '.join(splits)}")
    return (
        Path(data_dir if data_dir is not None else default_data_dir()) / SETS_DIR / f"{set_name}_{split}.h5"
    )


def read_set(
    path: Path, *, verify: bool = True, version: int = GENERATOR_VERSION, fix: str = _FIX
) -> tuple[dict[str, Tensor], dict]:
    """Every dataset (as tensors; string datasets as numpy bytes arrays) and attribute of a stored set;
    raises :class:`DataError` for a missing, unreadable, outdated (a generator version other than
    ``version``) or corrupt (checksum) file. Each message ends with ``fix`` (default: rerun
    ``make data-mnist``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"stored set {path} is missing; {fix}")
    try:
        with h5py.File(path, "r") as handle:
            attrs = {key: _plain(value) for key, value in handle.attrs.items()}
            data = {name: _as_tensor(handle[name][()]) for name in handle}
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"stored set {path} is unreadable ({error}); {fix}") from None
    stored_version = attrs.get("generator_version")
    if stored_version != version:
        raise DataError(
            f"stored set {path} is outdated: generator version {stored_version}, this code makes {version}; {fix}"
        )
    if "images" not in data or "labels" not in data:
        raise DataError(f"stored set {path} lacks images or labels; {fix}")
    if verify and set_checksum(data["images"], data["labels"]) != attrs.get("sha256"):
        raise DataError(f"stored set {path} fails its sha256 check (corrupt or modified); {fix}")
    return data, attrs


def _as_tensor(array: np.ndarray) -> Tensor | np.ndarray:
    """Numeric arrays as tensors; strings (numpy bytes) stay numpy arrays, which torch cannot hold."""
    return array if array.dtype.kind in "SUO" else torch.from_numpy(array)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def stored_set_checksum(set_name: str, split: str = "test", data_dir: Path | None = None) -> str | None:
    """The sha256 a stored set was written with (its attribute; the data is not read), ``None`` if the set
    is not built or unreadable. For comparing run records with today's sets, not for verifying a file."""
    try:
        with h5py.File(set_path(set_name, split, data_dir), "r") as handle:
            value = handle.attrs.get("sha256")
    except OSError:
        return None
    return None if value is None else _plain(value)


def load_set_arrays(set_name: str, split: str = "test", data_dir: Path | None = None) -> dict[str, Tensor]:
    """Everything stored for a set and split (images, labels and the true parameters; boxes for coloc)."""
    return read_set(set_path(set_name, split, data_dir))[0]


def load_set(set_name: str, split: str = "test", data_dir: Path | None = None) -> tuple[Tensor, Tensor]:
    """A stored set's ``(images uint8 [N, C, S, S], labels int64 [N])``, verified (see :func:`read_set`)."""
    data = load_set_arrays(set_name, split, data_dir)
    return data["images"], data["labels"].long()


def build_all_sets(
    data_dir: Path | None = None,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] = print,
    mnist: MnistArrays | None = None,
) -> list[Path]:
    """Build every stored set from the fetched MNIST: test and val of each of :data:`DISTORTED_SET_NAMES`
    (the paper's sets and the study sets), plus the
    splits of :data:`EXTRA_SETS` (:data:`EXTRA_SPLITS`; addition's val pairs the validation digits among
    themselves). Idempotent: a file that verifies and was made from the same seed is kept, so a set added
    to this list is built beside the existing files without touching them. Each set and split has its own
    seed (:func:`derive_seed`), so the files do not depend on which others are built. Clutter comes from
    the 55k training digits outside the validation split, so no stored image holds a patch of a validation
    or test digit. Returns the paths.

    ``mnist`` replaces the fetched MNIST (e.g. :func:`~stn_repro.data.mnist.synthetic_mnist` for tests and
    smoke runs); a training set of another size than 60,000 holds out a twelfth of it for validation.
    """
    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    mnist = mnist if mnist is not None else load_mnist(data_dir)
    num_train = len(mnist.train_images)
    num_validation = NUM_VALIDATION if num_train == NUM_TRAIN else max(1, num_train // 12)
    val_index = validation_indices(num_train=num_train, num_validation=num_validation)
    clutter = mnist.train_images[train_indices(True, num_train=num_train, num_validation=num_validation)]
    digits = {
        "test": (mnist.test_images, mnist.test_labels),
        "val": (mnist.train_images[val_index], mnist.train_labels[val_index]),
    }
    jobs: list[tuple[str, str, Callable[[int], dict[str, Tensor]]]] = []
    for set_name in DISTORTED_SET_NAMES:
        for split in SPLITS:
            images, labels = digits[split]
            jobs.append(
                (
                    set_name,
                    split,
                    lambda s, n=set_name, x=images, y=labels: generate_set(
                        n, x, y, s, clutter_source=clutter
                    ),
                )
            )
    test_images, test_labels = digits["test"]
    jobs.append(("addition", "test", lambda s: generate_addition_set(test_images, test_labels, s)))
    val_images, val_labels = digits["val"]
    jobs.append(("addition", "val", lambda s: generate_addition_set(val_images, val_labels, s)))
    jobs.append(("coloc", "test", lambda s: generate_colocalisation_set(test_images, test_labels, s)))
    jobs.append(
        ("coloc_tc", "test", lambda s: generate_colocalisation_set(test_images, test_labels, s, clutter))
    )
    paths = []
    for set_name, split, make in jobs:
        path = set_path(set_name, split, data_dir)
        set_seed = derive_seed(seed, "stored-set", set_name, split)
        paths.append(path)
        if _is_current(path, set_seed):
            log(f"  {path.name}: up to date")
            continue
        data = make(set_seed)
        write_set(path, data, {"set_name": set_name, "split": split, "seed": set_seed, "base_seed": seed})
        log(f"  {path.name}: wrote {tuple(data['images'].shape)}")
    return paths


def _is_current(path: Path, set_seed: int) -> bool:
    try:
        _, attrs = read_set(path)
    except DataError:
        return False
    return attrs.get("seed") == set_seed


# --- training data ------------------------------------------------------------------------------------------
