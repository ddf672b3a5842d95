"""MNIST: fetch (from a local folder or the mirrors), verify, load; plus synthetic digits for tests.

On disk the suite keeps the four *raw* (uncompressed) idx files in ``<data_dir>/mnist/`` and verifies
them by the md5 of their uncompressed bytes: the gzipped copies in circulation were re-compressed more
than once, so only the uncompressed bytes have a stable checksum.

The module also holds what the other data modules share: :class:`DataError`, :func:`md5_file` and
:func:`download_verified` (the checked, retried, atomic download of one archive).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stn_repro.data.files import DataError, default_data_dir
from stn_repro.io import atomic_write_bytes, md5_file

MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
"""md5 of each *uncompressed* MNIST file (the original distribution's bytes)."""

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Download mirrors, tried in order; each serves ``<name>.gz`` for every name in :data:`MNIST_MD5`."""

NUM_TRAIN = 60_000
NUM_TEST = 10_000
SOURCE_ENV = "STN_MNIST_SOURCE"
_IDX_MAGIC = {1: 2049, 3: 2051}  # idx magic numbers: unsigned-byte data with 1 (labels) or 3 (images) dims
_DOWNLOAD_ATTEMPTS = 2  # per mirror; a transient failure usually clears on a second try
_FETCH_HINT = (
    f"run `make data-mnist` (offline: `{SOURCE_ENV}=/path/to/folder/with/the/mnist/files make data-mnist`, "
    "the folder holding the four MNIST files, gzipped or raw)"
)


@dataclass(frozen=True)
class MnistArrays:
    """MNIST as tensors: images uint8 ``[N, 28, 28]`` (0 = black background), labels int64 ``[N]``."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


# --- fetching ---------------------------------------------------------------------------------------------


def fetch_mnist(dest_dir: Path, source: Path | None = None) -> Path:
    """Put the four verified raw MNIST idx files in ``dest_dir / "mnist"`` and return that folder.

    ``source`` (else ``$STN_MNIST_SOURCE``) is a local folder holding the files gzipped (``<name>.gz``)
    or raw (``<name>``); without one the files are downloaded from :data:`MNIST_MIRRORS`. Files already
    present with the right checksum are left alone, so a second call does nothing. Every file is written
    to a temporary name and renamed into place, so an interrupted fetch never leaves a partial file.
    Raises :class:`DataError` naming the problem and the fix.
    """
    out_dir = Path(dest_dir) / "mnist"
    if source is None and os.environ.get(SOURCE_ENV):
        source = Path(os.environ[SOURCE_ENV])
    missing = [name for name in MNIST_MD5 if not _is_verified(out_dir / name)]
    if not missing:
        return out_dir
    if source is not None and not Path(source).is_dir():
        raise DataError(
            f"MNIST source folder {Path(source).resolve()} does not exist or is not a folder; fix: point "
            f"--source or {SOURCE_ENV} at a folder holding the four MNIST files ({', '.join(MNIST_MD5)}, "
            "gzipped or raw, as the MNIST site and its mirrors serve them), or leave it unset to download them"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in missing:
        if source is not None:
            data, origin = _read_local(Path(source), name)
        else:
            data, origin = _download(name)
        got = hashlib.md5(data).hexdigest()
        if got != MNIST_MD5[name]:
            raise DataError(
                f"checksum mismatch for MNIST file {name} (from {origin}): expected md5 {MNIST_MD5[name]}, "
                f"got {got}; fix: replace it with an intact copy of the original file (gzipped or raw)"
            )
        atomic_write_bytes(out_dir / name, data)
    return out_dir


def _read_local(source: Path, name: str) -> tuple[bytes, Path]:
    """The uncompressed bytes of ``name`` from ``source`` (``name.gz`` preferred, else raw ``name``)."""
    gz_path, raw_path = source / f"{name}.gz", source / name
    if gz_path.is_file():
        return _gunzip(gz_path.read_bytes(), gz_path), gz_path
    if raw_path.is_file():
        return raw_path.read_bytes(), raw_path
    raise DataError(
        f"MNIST file {name} not found in {source}: expected {gz_path.name} or {raw_path.name}; "
        f"fix: copy the four MNIST files there, or point --source / {SOURCE_ENV} at a folder that has them"
    )


def _gunzip(data: bytes, origin: object) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{origin} is not a valid gzip file ({error}); fix: delete it and copy or download it again"
        ) from None


def _download(name: str) -> tuple[bytes, str]:
    failures = []
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{name}.gz"
        for attempt in range(_DOWNLOAD_ATTEMPTS):
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    return _gunzip(response.read(), url), url
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                failures.append(f"{url}: {error}")
                time.sleep(0.5 * (attempt + 1))
    raise DataError(
        f"could not download MNIST file {name} from any mirror (no network?): {'; '.join(failures)}. "
        f"Fix: download the four files elsewhere and set {SOURCE_ENV}=/path/to/that/folder "
        f"(e.g. `{SOURCE_ENV}=../shared/data/mnist make data-mnist`), or pass --source"
    )


def _is_verified(path: Path) -> bool:
    return path.is_file() and md5_file(path) == MNIST_MD5[path.name]


# --- shared by the data modules: checked downloads ---------------------------------------------------------


# --- loading ----------------------------------------------------------------------------------------------


def load_mnist(data_dir: Path | None = None, *, verify: bool = True) -> MnistArrays:
    """Load the four fetched MNIST files from ``data_dir / "mnist"`` (default :func:`default_data_dir`).

    With ``verify`` (the default, about 0.1 s) every file's md5 is checked first.
    """
    folder = Path(data_dir if data_dir is not None else default_data_dir()) / "mnist"
    arrays = {}
    for name in MNIST_MD5:
        path = folder / name
        if not path.is_file():
            raise DataError(f"MNIST file {path} is missing; fix: {_FETCH_HINT}")
        data = path.read_bytes()
        if verify and hashlib.md5(data).hexdigest() != MNIST_MD5[name]:
            raise DataError(f"MNIST file {path} fails its md5 check; fix: delete it and {_FETCH_HINT}")
        arrays[name] = _parse_idx(data, path)
    return MnistArrays(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"].long(),
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"].long(),
    )


def _parse_idx(data: bytes, origin: Path) -> Tensor:
    """An idx file of unsigned bytes (big-endian header) as a uint8 tensor of its stated shape."""
    if len(data) < 8:
        raise DataError(f"{origin} is too short to be an idx file; fix: delete it and {_FETCH_HINT}")
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if _IDX_MAGIC.get(ndim) != magic:
        raise DataError(
            f"{origin} has an unexpected idx magic number {magic}; fix: delete it and {_FETCH_HINT}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) != offset + math.prod(shape):
        raise DataError(f"{origin} is truncated (header says {shape}); fix: delete it and {_FETCH_HINT}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy())


# --- synthetic digits -------------------------------------------------------------------------------------

# Seven-segment layout: each segment's end points (x0, y0, x1, y1) in pixels of a 28 x 28 image, inside the
# central 20 x 20 box where MNIST puts its digits (pixel centres at integers, as in an array index).
_SEGMENTS = torch.tensor(
    [
        [10.0, 5.0, 17.0, 5.0],  # a: top
        [17.0, 5.0, 17.0, 13.5],  # b: top right
        [17.0, 13.5, 17.0, 22.0],  # c: bottom right
        [10.0, 22.0, 17.0, 22.0],  # d: bottom
        [10.0, 13.5, 10.0, 22.0],  # e: bottom left
        [10.0, 5.0, 10.0, 13.5],  # f: top left
        [10.0, 13.5, 17.0, 13.5],  # g: middle
    ]
)
_DIGIT_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]
_SEGMENT_MASK = torch.tensor([[s in segs for s in "abcdefg"] for segs in _DIGIT_SEGMENTS])  # [10, 7]
_CLASS_SHIFT_X = torch.tensor(
    [0.0, -3.5, 0, 0, 0, 0, 0, 0, 0, 0]
)  # centre the "1", which uses the right edge


def synthetic_mnist(num_train: int = 512, num_test: int = 256, seed: int = 0) -> MnistArrays:
    """Small MNIST-shaped stand-in for tests and smoke runs: seven-segment digits, centred like MNIST.

    Each image is the class's seven-segment glyph with per-sample random stroke width, slant, scale and
    offset, anti-aliased, uint8 ``[N, 28, 28]`` on a black background; labels are uniform over 0-9. A
    classifier learns them in a few hundred steps, and no real data is needed.
    """
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = _render_synthetic(num_train, generator)
    test_images, test_labels = _render_synthetic(num_test, generator)
    return MnistArrays(train_images, train_labels, test_images, test_labels)


def _render_synthetic(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.randint(0, 10, (n,), generator=generator)
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    width = 0.9 + 0.8 * rand(n)  # stroke half-width, px
    slant = 0.25 * (rand(n) - 0.5)  # x shear, as handwriting leans
    scale = 0.85 + 0.25 * rand(n)
    offset = 2.0 * (rand(n, 2) - 0.5)  # px
    centre = torch.tensor([13.5, 13.5])
    ends = _SEGMENTS.view(1, 7, 2, 2) + torch.stack([_CLASS_SHIFT_X[labels], torch.zeros(n)], -1).view(
        n, 1, 1, 2
    )
    ends = (ends - centre) * scale.view(n, 1, 1, 1)
    ends[..., 0] += slant.view(n, 1, 1) * ends[..., 1]
    ends = ends + centre + offset.view(n, 1, 1, 2)
    # Distance from every pixel centre to every segment, then the nearest *active* segment.
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    pixels = torch.stack([xs, ys], -1).view(1, 1, 28, 28, 2)
    start, end = ends[:, :, 0].view(n, 7, 1, 1, 2), ends[:, :, 1].view(n, 7, 1, 1, 2)
    direction = end - start
    t = ((pixels - start) * direction).sum(-1) / direction.pow(2).sum(-1).clamp_min(1e-6)
    nearest = start + t.clamp(0, 1).unsqueeze(-1) * direction
    distance = (pixels - nearest).norm(dim=-1)  # [n, 7, 28, 28]
    distance = torch.where(_SEGMENT_MASK[labels].view(n, 7, 1, 1), distance, torch.inf).amin(1)
    # A one-pixel linear ramp at the stroke edge anti-aliases it, as MNIST's grey edges.
    intensity = (width.view(n, 1, 1) + 0.5 - distance).clamp(0, 1)
    return (intensity * 255).round().to(torch.uint8), labels
