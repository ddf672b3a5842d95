"""CUB-200-2011's index files, read and checked: which images, which class, which split, which box."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from stn_repro.data.files import DataError, default_data_dir

SOURCE_ENV = "STN_CUB_SOURCE"
ARCHIVE_NAME = "CUB_200_2011.tgz"
CUB_FOLDER = "CUB_200_2011"
"""The folder the official archive extracts to (``<data_dir>/CUB_200_2011/``)."""


OFFICIAL_COUNTS = {"images": 11_788, "train": 5_994, "test": 5_794, "classes": 200}
"""What the official index lists (the paper: 5,994 training and 5,794 test images of 200 species)."""


INDEX_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "classes.txt",
    "bounding_boxes.txt",
)


SYNTHETIC_DIR = "synthetic-cub"  # <data_dir>/synthetic-cub/CUB_200_2011/


SYNTHETIC_MARKER = "synthetic.json"  # in the synthetic tree's CUB_200_2011/ folder


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
