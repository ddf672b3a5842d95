"""Undistorted 28x28 MNIST digits as a seeded, resumable training stream (e.g. co-localisation's embedding CNN).

The same interface as :class:`~stn_repro.data.sets.DistortedStream` (``next_batch``, ``state_dict``,
``load_state_dict``) and the same seeded per-epoch order (both from
:class:`~stn_repro.data.sets.SeededBatchStream`), with no distortion at all.
"""

from __future__ import annotations

from torch import Tensor

from stn_repro.data.sets import _check_uint8_digits
from stn_repro.data.streams import SeededBatchStream


class PlainStream(SeededBatchStream):
    """Batches of the digits as they are: seeded per-epoch permutations, every batch full.

    **Convention**: ``images_uint8 [N, 28, 28]``, ``labels [N]``; :meth:`next_batch` returns
    ``x [batch_size, 1, 28, 28]`` float32 in [0, 1] and ``y [batch_size]`` int64, both on ``device``
    (the digits move there once, as uint8). ``state_dict()`` holds the position in the epoch order, so a
    resumed stream continues with exactly the batches it would have produced.
    """

    kind = "PlainStream"

    def __init__(self, images_uint8: Tensor, labels: Tensor, batch_size: int, seed: int, device="cpu"):
        _check_uint8_digits(images_uint8, labels)
        super().__init__(labels, batch_size, seed, device)
        self.images = images_uint8.to(self.device).unsqueeze(1)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        index = self._order.take(self.batch_size)
        return self.images[index].float().div_(255.0), self.labels[index]
