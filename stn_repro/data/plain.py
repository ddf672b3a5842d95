"""Undistorted 28x28 MNIST digits as a seeded, resumable training stream (e.g. co-localisation's embedding CNN).

The same interface as :class:`~stn_repro.data.sets.DistortedStream` (``next_batch``, ``state_dict``,
``load_state_dict``) and the same seeded per-epoch order, with no distortion at all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sets import _check_uint8_digits, _EpochOrder


class PlainStream:
    """Batches of the digits as they are: seeded per-epoch permutations, every batch full.

    **Convention**: ``images_uint8 [N, 28, 28]``, ``labels [N]``; :meth:`next_batch` returns
    ``x [batch_size, 1, 28, 28]`` float32 in [0, 1] and ``y [batch_size]`` int64, both on ``device``
    (the digits move there once, as uint8). ``state_dict()`` holds the position in the epoch order, so a
    resumed stream continues with exactly the batches it would have produced.
    """

    kind = "PlainStream"

    def __init__(self, images_uint8: Tensor, labels: Tensor, batch_size: int, seed: int, device="cpu"):
        _check_uint8_digits(images_uint8, labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.device = torch.device(device)
        self.images = images_uint8.to(self.device).unsqueeze(1)
        self.labels = labels.to(self.device, torch.int64)
        self._order = _EpochOrder(len(labels), self.seed, self.device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def epoch(self) -> int:
        return self._order.epoch

    def next_batch(self) -> tuple[Tensor, Tensor]:
        index = self._order.take(self.batch_size)
        return self.images[index].float().div_(255.0), self.labels[index]

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "num_digits": len(self.labels),
            "batch_size": self.batch_size,
            "epoch": self._order.epoch,
            "position": self._order.position,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("kind", "seed", "num_digits"):
            if state.get(key) != self.state_dict()[key]:
                raise ValueError(
                    f"{self.kind}.load_state_dict: the state is for {key}={state.get(key)!r}, "
                    f"this stream has {self.state_dict()[key]!r}"
                )
        self._order.load(state["epoch"], state["position"])
