"""CUB-200-2011 (spec Sect. 6): the official archive, its index files, a torchvision-based dataset with the
paper's crops, a resumable (and shardable) batch stream, and a synthetic stand-in in CUB's exact format.

- Source: ``CUB_200_2011.tgz`` from Caltech DATA (:data:`CUB_URLS`), or the folder it extracts to. It holds
  ``CUB_200_2011/`` with ``images/<class folder>/<name>.jpg`` and the index files ``images.txt``,
  ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``, ``bounding_boxes.txt`` (and
  ``parts/``, ``attributes/``, which the suite does not read). :func:`prepare_cub` (``make data-cub``)
  puts a checked copy in ``<data_dir>/CUB_200_2011/``.
- :func:`read_cub_index` reads and checks the index files (:class:`CubIndex`); :class:`CubDataset` decodes
  and crops one image (the spec's recipe, :class:`CubCrops`); :class:`CubStream` is the training loop's
  batch stream over a ``DataLoader`` (workers, pinned memory), sharded with a ``DistributedSampler``;
  :func:`eval_loader` is the test-set loader.
- :func:`write_cub_tree` writes a tree in CUB's exact layout and file formats with synthetic "birds" (two
  textured parts, head and body, whose *pair* is the class) on cluttered backgrounds: test fixtures and
  the synthetic stand-in (:func:`build_synthetic_cub`, ``make data-cub-synthetic``), which is read by the
  same code as the real data. Its numbers are not CUB numbers; everything built from it says synthetic.

**Convention**: images leave the dataset as ``[3, S, S]`` RGB, uint8 or float in ``[0, 1]``: *no* mean/std
normalisation here. The models normalise after their spatial transformers have sampled the image (spec
Sect. 1, pitfall: zero padding must stay "black"). Labels are 0-based (``classes.txt`` ids minus 1). Image ids
are CUB's, 1-based. Boxes are ``(x, y, width, height)`` in pixels of the original image, as CUB stores them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms.v2 import functional as TF

from stn_repro.data.files import DataError, default_data_dir, download_verified
from stn_repro.data.sets import DEFAULT_SEED
from stn_repro.io import md5_file
from stn_repro.seeding import derive_seed

CUB_FOLDER = "CUB_200_2011"
"""The folder the official archive extracts to (``<data_dir>/CUB_200_2011/``)."""

ARCHIVE_NAME = "CUB_200_2011.tgz"
CUB_URLS = (
    "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    "http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz",
)
"""Where the official archive is served: Caltech DATA (the dataset's current home), then the old Caltech
Vision URL that older scripts use (kept as a fallback)."""

ARCHIVE_MD5 = "97eceeb196236b17998738112f37df78"
"""md5 of ``CUB_200_2011.tgz``. Caltech publishes none; this is the value that several independent public
loaders check the archive against (TDeVries' ``Cub2011`` dataset, Avalanche's ``CUB200``, the
pytorch-metric-learning ``CUB200`` dataset), not an official statement. No sha256 was found stated in a
public source, so none is checked. A mismatch is an error; an intact copy from elsewhere can still be used
as an extracted folder, which is checked by content (:data:`OFFICIAL_COUNTS`, every listed file)."""

OFFICIAL_COUNTS = {"images": 11_788, "train": 5_994, "test": 5_794, "classes": 200}
"""What the official index lists (the paper: 5,994 training and 5,794 test images of 200 species)."""

INDEX_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "classes.txt",
    "bounding_boxes.txt",
)
SOURCE_ENV = "STN_CUB_SOURCE"
DOWNLOAD_DIR = "cub"  # <data_dir>/cub/CUB_200_2011.tgz when downloaded
SYNTHETIC_DIR = "synthetic-cub"  # <data_dir>/synthetic-cub/CUB_200_2011/
SYNTHETIC_MARKER = "synthetic.json"  # in the synthetic tree's CUB_200_2011/ folder
SYNTHETIC_VERSION = 1
"""Bump whenever the synthetic renderer's output changes: existing synthetic trees are rebuilt."""

SYNTHETIC_DEFAULTS = {"classes": 30, "images_per_class": 60, "image_size": (200, 300)}
"""The stand-in ``make data-cub-synthetic`` builds: 30 classes (6 head x 5 body patterns), 60 images each
(half train, half test, as CUB's about 30/30), 200-300 px sides."""

_SOURCE_HINT = (
    f"point --source or {SOURCE_ENV} at CUB_200_2011.tgz (or a folder holding it, or the CUB_200_2011/ "
    f"folder it extracts to), from {CUB_URLS[0].split('?')[0]}"
)
_DOWNLOAD_ATTEMPTS = 2


# --- the index ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CubIndex:
    """CUB's index files, read and checked: one row per image, in ``images.txt`` order.

    ``paths`` are relative to ``root / "images"``; ``labels`` are 0-based class indices (``classes.txt``
    ids minus 1); ``boxes`` float ``[N, 4]`` as ``(x, y, width, height)`` px (``bounding_boxes.txt``; unused
    for training, kept for pictures). ``synthetic``: the tree carries the stand-in's marker.
    """

    root: Path
    image_ids: Tensor  # int64 [N]
    paths: tuple[str, ...]
    labels: Tensor  # int64 [N]
    is_train: Tensor  # bool [N]
    class_names: tuple[str, ...]
    boxes: Tensor  # float32 [N, 4]
    synthetic: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, split: str) -> Tensor:
        """Row indices of ``split`` (``train`` or ``test``), in file order."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown CUB split {split!r}; use train or test")
        mask = self.is_train if split == "train" else ~self.is_train
        return torch.nonzero(mask).flatten()

    def image_path(self, row: int) -> Path:
        return self.root / "images" / self.paths[row]

    def checksum(self) -> str:
        """sha256 over the ids, paths, labels and split: identifies the test protocol a record used."""
        digest = hashlib.sha256()
        for row in range(len(self.paths)):
            digest.update(
                f"{int(self.image_ids[row])} {self.paths[row]} {int(self.labels[row])} "
                f"{int(self.is_train[row])}\n".encode()
            )
        return digest.hexdigest()


def cub_root(data_dir: Path | None = None, synthetic: bool = False) -> Path:
    """Where ``make data-cub`` (or ``make data-cub-synthetic``) puts the tree."""
    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    return (data_dir / SYNTHETIC_DIR / CUB_FOLDER) if synthetic else (data_dir / CUB_FOLDER)


def _fix_for(root: Path, synthetic: bool) -> str:
    if synthetic:
        return "fix: rebuild it with `make data-cub-synthetic` (delete the folder first if it is damaged)"
    return (
        f"fix: delete {root} and rerun `make data-cub` (offline: {SOURCE_ENV}=/path/to/{ARCHIVE_NAME} "
        "make data-cub)"
    )


def _read_table(path: Path, columns: int, fix: str) -> list[list[str]]:
    """Rows of a whitespace-separated CUB index file (``columns`` fields, the last may hold the rest)."""
    if not path.is_file():
        raise DataError(f"CUB index file {path} is missing; {fix}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.strip().split(maxsplit=columns - 1)
            if len(fields) != columns:
                raise DataError(
                    f"{path}:{number}: expected {columns} fields, got {line.strip()!r}: not a CUB index file, "
                    f"or damaged; {fix}"
                )
            rows.append(fields)
    if not rows:
        raise DataError(f"CUB index file {path} is empty; {fix}")
    return rows


def _int(value: str, path: Path, row: int, fix: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}, row {row}: {value!r} is not a whole number; {fix}") from None


def read_cub_index(
    root: Path, *, expect_official: bool = False, check_files: bool = True, synthetic: bool | None = None
) -> CubIndex:
    """Read and check the index files of the CUB tree at ``root`` (a ``CUB_200_2011`` folder).

    Checks that every file lists the same image ids, that class ids run 1..C in ``classes.txt`` and every
    label is one of them, that split flags are 0 or 1 and boxes are four numbers with positive size; with
    ``expect_official`` that the counts are :data:`OFFICIAL_COUNTS`; with ``check_files`` that every image
    listed in ``images.txt`` exists (the message names how many are missing and the first few).
    ``synthetic`` (default: whether the stand-in's marker is there) only labels the result and the fix.
    Raises :class:`DataError` naming the file and the fix, in one line.
    """
    root = Path(root)
    if synthetic is None:
        synthetic = (root / SYNTHETIC_MARKER).is_file()
    fix = _fix_for(root, synthetic)
    if not root.is_dir():
        raise DataError(f"CUB-200-2011 folder {root} does not exist; {fix}")
    images = _read_table(root / "images.txt", 2, fix)
    ids = [_int(row[0], root / "images.txt", k + 1, fix) for k, row in enumerate(images)]
    if len(set(ids)) != len(ids):
        raise DataError(f"{root / 'images.txt'} lists an image id twice; {fix}")
    order = {image_id: k for k, image_id in enumerate(ids)}

    def by_id(name: str, columns: int) -> list[list[str]]:
        rows = _read_table(root / name, columns, fix)
        found = {}
        for k, row in enumerate(rows):
            image_id = _int(row[0], root / name, k + 1, fix)
            if image_id not in order or image_id in found:
                what = "an image id that images.txt does not list" if image_id not in order else "an id twice"
                raise DataError(f"{root / name}, row {k + 1}: {what} ({image_id}); {fix}")
            found[image_id] = row[1:]
        if len(found) != len(ids):
            missing = sorted(set(ids) - set(found))[:5]
            raise DataError(
                f"{root / name} lists {len(found)} images, images.txt {len(ids)} (first ids missing: "
                f"{', '.join(map(str, missing))}); {fix}"
            )
        return [found[image_id] for image_id in ids]

    labels_raw = by_id("image_class_labels.txt", 2)
    split_raw = by_id("train_test_split.txt", 2)
    boxes_raw = by_id("bounding_boxes.txt", 5)
    classes = _read_table(root / "classes.txt", 2, fix)
    class_ids = [_int(row[0], root / "classes.txt", k + 1, fix) for k, row in enumerate(classes)]
    if class_ids != list(range(1, len(classes) + 1)):
        raise DataError(f"{root / 'classes.txt'}: class ids must run 1..{len(classes)} in order; {fix}")
    labels = []
    for k, (value,) in enumerate(labels_raw):
        label = _int(value, root / "image_class_labels.txt", k + 1, fix)
        if not 1 <= label <= len(classes):
            raise DataError(
                f"{root / 'image_class_labels.txt'}: image {ids[k]} has class {label}, outside "
                f"1..{len(classes)}; {fix}"
            )
        labels.append(label - 1)
    flags = []
    for k, (value,) in enumerate(split_raw):
        if value not in ("0", "1"):
            raise DataError(
                f"{root / 'train_test_split.txt'}: image {ids[k]} has flag {value!r}, not 0 or 1; {fix}"
            )
        flags.append(value == "1")
    boxes = []
    for k, fields in enumerate(boxes_raw):
        try:
            box = [float(v) for v in fields]
        except ValueError:
            raise DataError(
                f"{root / 'bounding_boxes.txt'}: image {ids[k]} has a malformed box; {fix}"
            ) from None
        if not (box[2] > 0 and box[3] > 0):
            raise DataError(f"{root / 'bounding_boxes.txt'}: image {ids[k]} has an empty box {box}; {fix}")
        boxes.append(box)
    index = CubIndex(
        root=root,
        image_ids=torch.tensor(ids, dtype=torch.int64),
        paths=tuple(row[1].strip() for row in images),
        labels=torch.tensor(labels, dtype=torch.int64),
        is_train=torch.tensor(flags, dtype=torch.bool),
        class_names=tuple(row[1].strip() for row in classes),
        boxes=torch.tensor(boxes, dtype=torch.float32),
        synthetic=synthetic,
    )
    if expect_official:
        counts = {
            "images": len(ids),
            "train": int(index.is_train.sum()),
            "test": int((~index.is_train).sum()),
            "classes": index.num_classes,
        }
        if counts != OFFICIAL_COUNTS:
            found = ", ".join(f"{k} {v:,}" for k, v in counts.items())
            expected = ", ".join(f"{k} {v:,}" for k, v in OFFICIAL_COUNTS.items())
            raise DataError(f"{root} lists {found}; the official CUB-200-2011 has {expected}; {fix}")
    if check_files:
        missing = [path for path in index.paths if not (root / "images" / path).is_file()]
        if missing:
            raise DataError(
                f"{len(missing):,} of the {len(index.paths):,} images listed in {root / 'images.txt'} are "
                f"missing under {root / 'images'} (first: {', '.join(missing[:3])}); {fix}"
            )
    return index


def load_cub_index(data_dir: Path | None = None, *, synthetic: bool = False) -> CubIndex:
    """The checked index of the tree ``make data-cub`` (``synthetic``: ``make data-cub-synthetic``) built."""
    root = cub_root(data_dir, synthetic)
    if not root.is_dir():
        target = "make data-cub-synthetic" if synthetic else "make data-cub"
        offline = "" if synthetic else f" (offline: {SOURCE_ENV}=/path/to/{ARCHIVE_NAME} make data-cub)"
        raise DataError(f"CUB-200-2011 is not at {root}; fix: run `{target}`{offline}, or set STN_DATA")
    if synthetic and not (root / SYNTHETIC_MARKER).is_file():
        raise DataError(
            f"{root} has no {SYNTHETIC_MARKER}: not the synthetic stand-in; {_fix_for(root, True)}"
        )
    return read_cub_index(root, expect_official=not synthetic, synthetic=synthetic)


# --- getting the official data -------------------------------------------------------------------------------


def prepare_cub(
    data_dir: Path | None = None,
    source: Path | None = None,
    *,
    download: bool = True,
    expect_official: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Put a checked CUB-200-2011 tree at ``<data_dir>/CUB_200_2011/`` and return it (``make data-cub``).

    ``source`` (else ``$STN_CUB_SOURCE``) is ``CUB_200_2011.tgz``, a folder holding it, the extracted
    ``CUB_200_2011/`` folder or a folder holding that. Without one the archive is downloaded into
    ``<data_dir>/cub/`` (``download``). An archive must match :data:`ARCHIVE_MD5` (with
    ``expect_official``); the tree must pass :func:`read_cub_index` (official counts, every listed image
    present) before it is renamed into place: it is extracted or copied into a temporary folder beside the
    target first, so an interrupted run never leaves a partial ``CUB_200_2011/``. A tree already in place
    that passes the checks is left alone; one that fails them is an error naming what is missing.
    """
    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    target = data_dir / CUB_FOLDER
    if target.exists():
        read_cub_index(target, expect_official=expect_official, synthetic=False)
        log(f"  {target}: up to date")
        return target
    if source is None and os.environ.get(SOURCE_ENV):
        source = Path(os.environ[SOURCE_ENV])
    if source is None:
        if not download:
            raise DataError(f"no CUB-200-2011 source given; fix: {_SOURCE_HINT}")
        log(f"no --source or ${SOURCE_ENV}: downloading {ARCHIVE_NAME} into {data_dir / DOWNLOAD_DIR}")
        source = download_cub(data_dir)
    source = Path(source)
    archive, tree = _locate_source(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=data_dir, prefix=".cub-extract-"))
    try:
        if archive is not None:
            if expect_official:
                log(f"  {archive}: checking md5")
                found = md5_file(archive)
                if found != ARCHIVE_MD5:
                    raise DataError(
                        f"{archive} is not the official {ARCHIVE_NAME} (md5 {found}, expected {ARCHIVE_MD5}); "
                        f"fix: delete it and download it again ({CUB_URLS[0].split('?')[0]})"
                    )
            log(f"  {archive}: extracting")
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(scratch, filter="data")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                raise DataError(
                    f"{archive} is corrupt or truncated ({error}); fix: delete it and copy or download it again"
                ) from None
            extracted = scratch / CUB_FOLDER
            if not (extracted / "images.txt").is_file():
                raise DataError(
                    f"{archive} holds no {CUB_FOLDER}/images.txt: not the CUB-200-2011 archive; fix: {_SOURCE_HINT}"
                )
        else:
            log(f"  {tree}: checking, then copying")
            read_cub_index(tree, expect_official=expect_official, synthetic=False)
            extracted = scratch / CUB_FOLDER
            shutil.copytree(tree, extracted, symlinks=False)
        read_cub_index(extracted, expect_official=expect_official, synthetic=False)
        os.chmod(extracted, 0o777 & ~_umask())
        os.replace(extracted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"  {target}: ready")
    return target


def _locate_source(source: Path) -> tuple[Path | None, Path | None]:
    """``(archive, None)`` or ``(None, extracted tree)`` for a ``--source`` path."""
    if source.is_file():
        return source, None
    if not source.is_dir():
        raise DataError(f"CUB source {source} does not exist; fix: {_SOURCE_HINT}")
    if (source / "images.txt").is_file():
        return None, source
    if (source / CUB_FOLDER / "images.txt").is_file():
        return None, source / CUB_FOLDER
    if (source / ARCHIVE_NAME).is_file():
        return source / ARCHIVE_NAME, None
    raise DataError(
        f"CUB source {source} holds neither {ARCHIVE_NAME} nor a {CUB_FOLDER}/ folder with images.txt; "
        f"fix: {_SOURCE_HINT}"
    )


def download_cub(data_dir: Path | None = None) -> Path:
    """Download the official archive into ``<data_dir>/cub/`` (md5-checked before it is renamed into place;
    one already there with the right md5 is kept) and return its path. Network needed; about 1.1 GB."""
    folder = Path(data_dir if data_dir is not None else default_data_dir()) / DOWNLOAD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ARCHIVE_NAME
    if path.is_file() and md5_file(path) == ARCHIVE_MD5:
        return path
    fix = f"download it elsewhere and set {SOURCE_ENV}=/path/to/{ARCHIVE_NAME} (or pass --source)"
    return download_verified(
        CUB_URLS,
        path,
        _archive_md5_problem,
        attempts=_DOWNLOAD_ATTEMPTS,
        corrupt_fix=f"retry, or {fix}",
        offline_fix=fix,
    )


def _archive_md5_problem(archive: Path) -> str | None:
    """``None`` when ``archive`` has :data:`ARCHIVE_MD5`, else what it has instead."""
    found = md5_file(archive)
    return None if found == ARCHIVE_MD5 else f"md5 {found}, expected {ARCHIVE_MD5}"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# --- crops and the dataset -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CubCrops:
    """The spec's crops: the shorter side resized to ``resize``, then a ``crop x crop`` window.

    Training: a random window and a horizontal flip with probability 1/2 (the appendix: random 224 crops
    from 256, 448 from 512, and flips). Test [choice: the paper does not say]: the central window of the
    same resize, one view, no flip. ``resize`` and ``crop`` scale together for small CPU runs
    (:meth:`scaled`), keeping the paper's 8:7 ratio.
    """

    resize: int = 256
    crop: int = 224

    def __post_init__(self) -> None:
        if not 1 <= self.crop <= self.resize:
            raise ValueError(f"crop {self.crop} must lie in [1, resize={self.resize}]")

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of a ``width x height`` image after the resize: the shorter side to ``resize``,
        the longer to ``int(resize * long / short)`` (torchvision's ``resize(image, [resize])``)."""
        short, long = min(width, height), max(width, height)
        resized_long = int(self.resize * long / short)
        return (self.resize, resized_long) if width <= height else (resized_long, self.resize)

    def central_window(self, width: int, height: int) -> tuple[int, int]:
        """``(left, top)`` of the test view's ``crop x crop`` window in a resized ``width x height`` image."""
        return (width - self.crop) // 2, (height - self.crop) // 2

    def scaled(self, factor: float) -> CubCrops:
        crop = max(8, round(self.crop * factor))
        return CubCrops(resize=max(crop, round(self.resize * factor)), crop=crop)


def augmentation_seed(seed: int, epoch: int, row: int) -> int:
    """The seed of image ``row``'s crop and flip in ``epoch``: the same whatever the worker, rank or batch."""
    return derive_seed(seed, "cub-augment", int(epoch), int(row))


class CubDataset(Dataset):
    """One split of a :class:`CubIndex`, decoded and cropped (PIL + torchvision), without normalisation.

    Item ``k`` (an int) is the ``k``-th image of the split with the *test* crop (central window, no flip);
    item ``(k, seed)`` is the same image with the *training* crop drawn from ``seed`` (a random window and
    a flip with probability 1/2), so a :class:`CubStream` decides every random choice and resuming or
    changing the number of workers gives the same batches. Returns ``(image, label)``: image ``[3, S, S]``
    float in ``[0, 1]`` (``dtype=torch.uint8``: 0-255, what the stream moves to the device), label int64.
    Grey or CMYK JPEGs (CUB has a few) are converted to RGB.
    """

    def __init__(
        self, index: CubIndex, split: str, crops: CubCrops = CubCrops(), dtype: torch.dtype = torch.float32
    ):
        self.index, self.split, self.crops, self.dtype = index, split, crops, dtype
        self.rows = index.split(split)
        if len(self.rows) == 0:
            raise DataError(f"{index.root} has no {split} images; {_fix_for(index.root, index.synthetic)}")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> Tensor:
        return self.index.labels[self.rows]

    def row(self, item: int) -> int:
        return int(self.rows[item])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        item, seed = (key, None) if isinstance(key, int | np.integer) else key
        row = self.row(int(item))
        image = self.load(row)
        image = TF.resize(image, [self.crops.resize], antialias=True)
        width, height = image.size
        crop = self.crops.crop
        if seed is None:
            (left, top), flip = self.crops.central_window(width, height), False
        else:
            rng = np.random.default_rng(seed)
            top = int(rng.integers(0, height - crop + 1))
            left = int(rng.integers(0, width - crop + 1))
            flip = bool(rng.random() < 0.5)
        image = TF.crop(image, top, left, crop, crop)
        if flip:
            image = TF.horizontal_flip(image)
        tensor = TF.pil_to_tensor(image)
        if self.dtype != torch.uint8:
            tensor = tensor.to(self.dtype).div_(255.0)
        return tensor, self.index.labels[row]

    def load(self, row: int) -> Image.Image:
        """The original image of index row ``row`` as RGB."""
        path = self.index.image_path(row)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(
                f"CUB image {path} cannot be decoded ({error}); {_fix_for(self.index.root, self.index.synthetic)}"
            ) from None


class _Batches:
    """The stream's batch sampler: lists of ``(item, augmentation seed)`` keys from ``(epoch, position)`` on,
    epoch after epoch (so the ``DataLoader``'s workers keep prefetching across epoch boundaries)."""

    def __init__(self, stream: CubStream, epoch: int, position: int):
        self.stream, self.epoch, self.position = stream, epoch, position

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, position = self.epoch, self.position
        while True:
            yield from self.stream.epoch_batches(epoch)[position:]
            epoch, position = epoch + 1, 0


class CubStream:
    """The training loop's batch stream over a :class:`CubDataset` (a ``DataLoader`` with workers and
    pinned memory), sharded over ``world_size`` processes.

    Each epoch's order is a ``DistributedSampler`` permutation (seeded from ``seed`` and the epoch, the same
    on every rank; rank ``r`` takes every ``world_size``-th image from ``r``, the last incomplete global
    batch is dropped), cut into batches of ``batch_size`` images *per rank*: the global batch is
    ``batch_size x world_size``, and the union of the ranks' ``k``-th batches is exactly the ``k``-th batch
    of one process with the global batch size. Every image's crop and flip come from
    :func:`augmentation_seed`. :meth:`next_batch` returns ``x [batch_size, 3, S, S]`` float in ``[0, 1]``
    and ``y [batch_size]`` int64 on ``device``. State: the epoch and the batches consumed in it; a resumed
    stream yields exactly the batches it would have (whatever ``workers``).
    """

    kind = "CubStream"

    def __init__(
        self,
        dataset: CubDataset,
        batch_size: int,
        seed: int,
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        pin_memory: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.rank, self.world_size, self.workers = int(rank), int(world_size), int(workers)
        self.device = torch.device(device)
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.sampler = DistributedSampler(
            range(len(dataset)),
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=derive_seed(self.seed, "cub-order") % (1 << 62),
            drop_last=True,
        )
        self.batches_per_epoch = len(self.sampler) // self.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{len(dataset)} training images cannot fill one global batch of {self.batch_size} x "
                f"{self.world_size} processes; lower trainer.batch_size"
            )
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, list[list[tuple[int, int]]]] | None = None
        self._iterator: Iterator | None = None

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of ``epoch``: lists of ``(item, augmentation seed)`` keys."""
        if self._cached is None or self._cached[0] != epoch:
            self.sampler.set_epoch(epoch)
            items = list(self.sampler)
            rows = self.dataset.rows
            batches = [
                [
                    (item, augmentation_seed(self.seed, epoch, int(rows[item])))
                    for item in items[k : k + self.batch_size]
                ]
                for k in range(0, self.batches_per_epoch * self.batch_size, self.batch_size)
            ]
            self._cached = (epoch, batches)
        return self._cached[1]

    def _loader(self) -> Iterator:
        loader = DataLoader(
            self.dataset,
            batch_sampler=_Batches(self, self.epoch, self.position),
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            prefetch_factor=2 if self.workers else None,
            # Its own generator: starting a loader draws a seed, which must not come from the global RNG
            # (dropout's), or a resumed run would draw different masks. The keys decide every random choice.
            generator=torch.Generator().manual_seed(0),
        )
        return iter(loader)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        if self._iterator is None:
            self._iterator = self._loader()
        images, labels = next(self._iterator)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return images, labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the loader's workers (they also stop when the stream is garbage collected)."""
        self._iterator = None

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "num_images": len(self.dataset),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "crop": self.dataset.crops.crop,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("kind", "seed", "num_images", "batch_size", "world_size", "crop"):
            if state.get(key) != mine[key]:
                hint = (
                    f"; relaunch with {state.get(key)} processes (NPROC={state.get(key)})"
                    if key == "world_size"
                    else ""
                )
                raise ValueError(
                    f"{self.kind}.load_state_dict: the checkpoint is for {key}={state.get(key)!r}, this run "
                    f"has {mine[key]!r}{hint}"
                )
        if not 0 <= state["position"] < self.batches_per_epoch:
            raise ValueError(f"position {state['position']} is outside an epoch of {self.batches_per_epoch}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None


def eval_loader(
    dataset: CubDataset,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The test-crop loader of ``dataset``'s items ``rank, rank + world_size, ...`` (each rank scores its
    share; no image twice, none left out), in order."""
    shard = Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # not the global RNG's (see CubStream)
    )


# --- fixture trees and the synthetic stand-in ------------------------------------------------------------------

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
) -> Path:
    """Write a CUB-format tree ``dest/CUB_200_2011/`` of synthetic birds and return that folder.

    Exactly CUB's layout and file formats: ``images/<NNN.Class_name>/<Class_Name>_<NNNN>_<id>.jpg`` (JPEG),
    ``images.txt`` (``<image_id> <class folder>/<file>``), ``image_class_labels.txt`` (``<image_id>
    <class_id>``, 1-based), ``train_test_split.txt`` (``<image_id> <1|0>``, 1 = training),
    ``classes.txt`` (``<class_id> <NNN.Class_name>``), ``bounding_boxes.txt`` (``<image_id> <x> <y> <width>
    <height>``, floats); image ids run 1..N in class-folder then file-name order, as CUB's. Each class has
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
        for image_id, ((c, folder, file, train), box) in enumerate(zip(jobs, boxes, strict=True), 1):
            lines["images.txt"].append(f"{image_id} {folder}/{file}")
            lines["image_class_labels.txt"].append(f"{image_id} {c + 1}")
            lines["train_test_split.txt"].append(f"{image_id} {int(train)}")
            lines["bounding_boxes.txt"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
        lines["classes.txt"] = [f"{c + 1} {name}" for c, name in enumerate(names)]
        for name, rows in lines.items():
            (tree / name).write_text("\n".join(rows) + "\n")
        if synthetic_marker:
            marker = {
                "generator": "stn_repro.data.cub.write_cub_tree",
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
        os.chmod(tree, 0o777 & ~_umask())
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
    )
    index = read_cub_index(target, synthetic=True)
    log(
        f"  {target}: {len(index.paths):,} images ({int(index.is_train.sum()):,} train), "
        f"{index.num_classes} classes; SYNTHETIC, not CUB"
    )
    return target
