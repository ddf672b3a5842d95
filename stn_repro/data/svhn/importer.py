"""Import SVHN format 1 (folders or the official archives, checked) into stored sets of the crops, and
download it where there is a network.

:func:`import_svhn` reads each split's ``digitStruct.mat`` and PNGs (:mod:`.digit_struct`), crops every
image (:mod:`.crops`) at each stored size and writes the stored sets (:mod:`.stored`); the synthetic
stand-in (:mod:`stn_repro.data.synthetic.svhn`) goes through the same importer.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stn_repro.data.files import DataError, default_data_dir, download_verified
from stn_repro.data.sets import DEFAULT_SEED, validation_indices, write_set
from stn_repro.data.svhn.crops import CROP_SCALE, MAX_DIGITS, crop_and_resize, encode_labels
from stn_repro.data.svhn.digit_struct import _DIGIT_STRUCT_FIX, DIGIT_STRUCT, SvhnImage, read_digit_struct
from stn_repro.data.svhn.stored import (
    NUM_VALIDATION,
    SETS_DIR,
    SOURCE_ENV,
    SVHN_SPLITS,
    SVHN_VERSION,
    SYNTHETIC_NAME,
    _is_current,
    _stored_splits,
    svhn_set_path,
)
from stn_repro.io import md5_file
from stn_repro.seeding import derive_seed

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


DOWNLOAD_DIR = "svhn"
_SOURCE_HINT = (
    f"point --source or {SOURCE_ENV} at a folder holding train/, test/ (and extra/) extracted from the SVHN "
    f"format-1 download, or the archives train.tar.gz, test.tar.gz (extra.tar.gz) from {SVHN_URL}"
)
_DOWNLOAD_ATTEMPTS = 2


# --- digitStruct.mat ------------------------------------------------------------------------------------


# --- the crop recipe ------------------------------------------------------------------------------------


# --- importing ------------------------------------------------------------------------------------------


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
    attrs: Mapping[str, int | str] | None = None,
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

    ``attrs`` are further attributes written into every stored set (the synthetic stand-in's version).
    Idempotent: a split whose files all verify and were made with the same name, seed, sizes,
    ``num_validation``, ``description`` and ``attrs`` is skipped without reading its source. Everything is checked
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
        wanted = {"set_name": name, "split": stored, "size": size, "seed": seed, "source": description}
        if split == "train":
            wanted["num_validation"] = num_validation
        return wanted | dict(attrs or {})

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
                set_attrs = {
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
                write_set(path, data, set_attrs, version=SVHN_VERSION)
                log(f"  {path.name}: wrote {tuple(data['images'].shape)}")
            del crops, data  # one split's images in memory at a time
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return paths


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


# --- synthetic stand-in ---------------------------------------------------------------------------------
