"""MNIST addition training data (spec Sect. 3): a seeded, resumable stream of fresh pairs every batch.

The fixed test set is the stored ``addition`` set (:func:`~stn_repro.data.sets.generate_addition_set`, built
by ``make data-mnist``); this module only adds the training stream, built from the same pieces as
:class:`~stn_repro.data.sets.DistortedStream` (seeded per-epoch orders, derived seeds, the
:func:`~stn_repro.data.distortions.addition_pairs` generator).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .distortions import ADDITION_SIZE, addition_pairs
from .sets import _check_uint8_digits, _EpochOrder, derive_seed


class AdditionStream:
    """On-the-fly MNIST addition batches: every pair, and both of its RTS distortions, fresh each time.

    **Convention**: ``images_uint8 [N, 28, 28]``, ``labels [N]`` (the training digits); :meth:`next_batch`
    returns ``x [batch_size, 2, 42, 42]`` float32 on ``device`` (quantised like the stored sets; channel 0
    holds the first digit, channel 1 the second, each with its own independent RTS distortion) and
    ``y [batch_size]`` int64 on ``device``, the sum of the two digits' labels (0..18).

    Each channel reads the digits through its own seeded per-epoch permutation (as
    :class:`~stn_repro.data.sets.DistortedStream` does), so each digit appears once per epoch in each channel
    and the pairs change every epoch. ``state_dict()`` / ``load_state_dict()`` capture both positions and the
    distortion generator, so a resumed stream continues with exactly the batches it would have produced.
    ``last_params`` holds the true RTS parameters of the latest batch (:func:`addition_pairs`'s) and
    ``last_digit_labels [batch_size, 2]`` the two digits' labels.
    """

    kind = "AdditionStream"
    set_name = "addition"

    def __init__(
        self,
        images_uint8: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device="cpu",
    ):
        _check_uint8_digits(images_uint8, labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.device = torch.device(device)
        self.image_size = ADDITION_SIZE
        self.labels = labels.to(self.device, torch.int64)
        # Copy as uint8 (4x fewer bytes), convert on the device.
        self.digits = images_uint8.to(self.device).unsqueeze(1).float().div_(255.0)
        self._orders = [
            _EpochOrder(len(labels), derive_seed(self.seed, "addition", channel), self.device)
            for channel in ("first", "second")
        ]
        self._generator = torch.Generator().manual_seed(derive_seed(self.seed, "distortions", "addition"))
        self.last_params: dict[str, Tensor] | None = None
        self.last_digit_labels: Tensor | None = None

    @property
    def epoch(self) -> int:
        """Completed passes over the digits (of the first channel's order)."""
        return self._orders[0].epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> tuple[Tensor, Tensor]:
        first, second = (order.take(self.batch_size) for order in self._orders)
        x, self.last_params = addition_pairs(self.digits[first], self.digits[second], self._generator)
        self.last_digit_labels = torch.stack([self.labels[first], self.labels[second]], dim=1)
        return x, self.last_digit_labels.sum(dim=1)

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "set_name": self.set_name,
            "seed": self.seed,
            "num_digits": len(self.labels),
            "batch_size": self.batch_size,
            "epochs": [order.epoch for order in self._orders],
            "positions": [order.position for order in self._orders],
            "generator_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("kind", "set_name", "seed", "num_digits"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"{self.kind}.load_state_dict: the state is for {key}={state.get(key)!r}, "
                    f"this stream has {mine[key]!r}"
                )
        for order, epoch, position in zip(self._orders, state["epochs"], state["positions"], strict=True):
            order.load(epoch, position)
        self._generator.set_state(state["generator_state"])
