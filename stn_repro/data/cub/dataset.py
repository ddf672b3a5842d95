"""CUB-200-2011 for training: a torchvision-based dataset with the paper's crops (:class:`CubCrops`,
:class:`CubDataset`), the training loop's resumable, shardable batch stream (:class:`CubStream`) and the
test-set loader (:func:`eval_loader`).

**Convention**: images leave the dataset as ``[3, S, S]`` RGB, uint8 or float in ``[0, 1]``: *no* mean/std
normalisation here. The models normalise after their spatial transformers have sampled the image (spec
Sect. 1, pitfall: zero padding must stay "black"). Labels are 0-based (``classes.txt`` ids minus 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms.v2 import functional as TF

from stn_repro.data.cub.index import CubIndex, _fix_for
from stn_repro.data.files import DataError
from stn_repro.seeding import derive_seed

# --- the index ---------------------------------------------------------------------------------------------


# --- getting the official data -------------------------------------------------------------------------------


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
