"""Seeded, resumable training batches: the base every data set's stream shares (:class:`SeededBatchStream`)
and distorted MNIST's three ways to train: :class:`DistortedStream` (fresh distortions every batch, the
default), :class:`FixedTrainingSet` (one distorted copy, generated once) and :class:`DistortedMNIST` (a
per-sample ``Dataset`` for ``DataLoader`` code, and the slow baseline of the benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from stn_repro.data.sets import _as_float, _check_uint8_digits, generate_set
from stn_repro.seeding import EpochOrder, derive_seed

from .distortions import (
    DISTORTED_SET_NAMES,
    IMAGE_SIZE,
    distort,
)


class SeededBatchStream:
    """The seeded, resumable part that every training-batch stream shares; a subclass adds only what an item
    is and how a batch is made (:meth:`next_batch`).

    **Convention**: ``labels [N, ...]`` (one row per item; they move to ``device`` as int64, and
    ``len(stream) == N``), ``batch_size`` items per batch, ``seed`` the stream's seed. The items are read
    through seeded per-epoch permutations (:class:`EpochOrder`; a batch that reaches the end of one epoch
    is completed from the next, so every batch is full): ``self._order.take(self.batch_size)`` gives the
    next batch's item indices on ``device``. By default there is one order, seeded by ``seed`` itself;
    ``order_keys`` gives one order per entry instead, each seeded by ``derive_seed(seed, *key)``
    (``self._orders``; ``self._order`` is the first). A stream whose batches need random choices of their
    own sets ``self._generator`` (a CPU generator, e.g. from :meth:`_derived_generator`).

    ``state_dict()`` holds, in this order: the fields named in :attr:`state_fields` (``num_digits`` and
    ``num_images`` are ``len(stream)``, any other name is the attribute), then ``epoch`` and ``position``
    (one order) or the lists ``epochs`` and ``positions`` (several), then ``generator_state`` when there
    is a generator. ``load_state_dict()`` first checks that the state's :attr:`checked_fields` equal this
    stream's (``ValueError`` otherwise), then restores the orders and the generator, so a resumed stream
    continues with exactly the batches it would have produced.
    """

    kind: str
    state_fields: tuple[str, ...] = ("kind", "seed", "num_digits", "batch_size")
    """The fields that open ``state_dict()``, in order."""
    checked_fields: tuple[str, ...] = ("kind", "seed", "num_digits")
    """The fields a state must share with this stream to load."""
    _generator: torch.Generator | None = None

    def __init__(
        self,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device,
        order_keys: Sequence[tuple[object, ...]] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.device = torch.device(device)
        self.labels = labels.to(self.device, torch.int64)
        seeds = [self.seed] if order_keys is None else [derive_seed(self.seed, *key) for key in order_keys]
        self._orders = [EpochOrder(len(labels), order_seed, self.device) for order_seed in seeds]
        self._order = self._orders[0]

    def _derived_generator(self, *keys: object) -> torch.Generator:
        """A CPU generator seeded with ``derive_seed(seed, *keys)``."""
        return torch.Generator().manual_seed(derive_seed(self.seed, *keys))

    @property
    def epoch(self) -> int:
        """Completed passes over the items (a batch that crosses an epoch boundary counts in the new one;
        with several orders, the first one's)."""
        return self._order.epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _field(self, name: str):
        return len(self) if name in ("num_digits", "num_images") else getattr(self, name)

    def state_dict(self) -> dict:
        state = {name: self._field(name) for name in self.state_fields}
        if len(self._orders) == 1:
            state.update(epoch=self._order.epoch, position=self._order.position)
        else:
            state.update(
                epochs=[order.epoch for order in self._orders],
                positions=[order.position for order in self._orders],
            )
        if self._generator is not None:
            state["generator_state"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        for key in self.checked_fields:
            if state.get(key) != (mine := self._field(key)):
                raise ValueError(
                    f"{self.kind}.load_state_dict: the state is for {key}={state.get(key)!r}, "
                    f"this stream has {mine!r}"
                )
        if len(self._orders) == 1:
            self._order.load(state["epoch"], state["position"])
        else:
            for order, epoch, position in zip(self._orders, state["epochs"], state["positions"], strict=True):
                order.load(epoch, position)
        if self._generator is not None:
            self._generator.set_state(state["generator_state"])


class DistortedBatchSource(SeededBatchStream):
    """The distorted-MNIST training data: a :class:`SeededBatchStream` of the digits of one set."""

    state_fields = ("kind", "set_name", "seed", "num_digits", "batch_size")
    checked_fields = ("kind", "set_name", "seed", "num_digits")

    def __init__(self, set_name: str, labels: Tensor, batch_size: int, seed: int, device):
        if set_name not in DISTORTED_SET_NAMES:
            raise ValueError(
                f"unknown distorted-MNIST set {set_name!r}; known: {', '.join(DISTORTED_SET_NAMES)}"
            )
        super().__init__(labels, batch_size, seed, device)
        self.set_name = set_name
        self.image_size = IMAGE_SIZE[set_name]


class DistortedStream(DistortedBatchSource):
    """On-the-fly training batches with fresh distortions every time (spec Sect. 2 [choice]).

    **Convention**: ``images_uint8 [N, 28, 28]``, ``labels [N]``; :meth:`next_batch` returns
    ``x [batch_size, 1, S, S]`` float32 on ``device`` (quantised like the stored sets) and ``y [batch_size]``
    int64 on ``device``. The digits go through seeded per-epoch permutations; a batch that reaches the end
    of one epoch is completed from the next, so every batch is full. The digits (as float) and the
    clutter source move to ``device`` once; per batch only the random parameters are copied there.
    ``state_dict()`` / ``load_state_dict()`` capture the position and the generator, so a resumed stream
    continues with exactly the batches it would have produced. ``last_params`` holds the true parameters
    of the latest batch.
    """

    kind = "DistortedStream"

    def __init__(
        self,
        set_name: str,
        images_uint8: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device="cpu",
        clutter_source: Tensor | None = None,
    ):
        super().__init__(set_name, labels, batch_size, seed, device)
        _check_uint8_digits(images_uint8, labels)
        if set_name == "tc" and clutter_source is None:
            raise ValueError(
                "set 'tc' needs clutter_source: the training digits [M, 28, 28] to crop clutter from"
            )
        # Copy as uint8 (4x fewer bytes), convert on the device.
        self.digits = images_uint8.to(self.device).unsqueeze(1).float().div_(255.0)
        self.clutter_source = None if clutter_source is None else clutter_source.to(self.device)
        self._generator = self._derived_generator("distortions", set_name)
        self.last_params: dict[str, Tensor] | None = None

    def next_batch(self) -> tuple[Tensor, Tensor]:
        index = self._order.take(self.batch_size)
        x, self.last_params = distort(self.set_name, self.digits[index], self._generator, self.clutter_source)
        return x, self.labels[index]


class FixedTrainingSet(DistortedBatchSource):
    """A distorted training set generated once from ``seed`` (the alternative to :class:`DistortedStream`,
    with the same interface); batches are seeded per-epoch permutations of it. Stored on ``device`` as uint8."""

    kind = "FixedTrainingSet"

    def __init__(
        self,
        set_name: str,
        images_uint8: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device="cpu",
        clutter_source: Tensor | None = None,
    ):
        super().__init__(set_name, labels, batch_size, seed, device)
        data = generate_set(
            set_name, images_uint8, labels, derive_seed(self.seed, "fixed-set", set_name), clutter_source
        )
        self.images = data["images"].to(self.device)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        index = self._order.take(self.batch_size)
        return self.images[index].float().div_(255.0), self.labels[index]


class DistortedMNIST(Dataset):
    """Per-sample distorted MNIST for ``DataLoader`` code: item ``i`` is digit ``i`` distorted with a
    generator seeded from ``(seed, epoch, i)``; call :meth:`set_epoch` for fresh distortions each epoch.

    Returns ``(image float32 [1, S, S], label int64 scalar)`` on the CPU. One image at a time, it is the
    tutorial-style, slow baseline for :class:`DistortedStream`.
    """

    def __init__(
        self,
        set_name: str,
        images_uint8: Tensor,
        labels: Tensor,
        seed: int,
        clutter_source: Tensor | None = None,
    ):
        if set_name not in DISTORTED_SET_NAMES:
            raise ValueError(
                f"unknown distorted-MNIST set {set_name!r}; known: {', '.join(DISTORTED_SET_NAMES)}"
            )
        _check_uint8_digits(images_uint8, labels)
        if set_name == "tc" and clutter_source is None:
            raise ValueError(
                "set 'tc' needs clutter_source: the training digits [M, 28, 28] to crop clutter from"
            )
        self.set_name, self.seed, self.epoch = set_name, int(seed), 0
        self.images, self.labels, self.clutter_source = images_uint8, labels.long(), clutter_source

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "sample", self.epoch, int(index)))
        image, _ = distort(
            self.set_name, _as_float(self.images[index : index + 1]), generator, self.clutter_source
        )
        return image[0], self.labels[index]
