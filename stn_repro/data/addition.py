"""MNIST addition training data (spec Sect. 3): a seeded, resumable stream of fresh pairs every batch.

The fixed test set is the stored ``addition`` set (:func:`~stn_repro.data.sets.generate_addition_set`, built
by ``make data-mnist``); this module only adds the training stream, built from the same pieces as
:class:`~stn_repro.data.sets.DistortedStream` (seeded per-epoch orders, derived seeds, the
:func:`~stn_repro.data.distortions.addition_pairs` generator).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stn_repro.data.sets import _check_uint8_digits
from stn_repro.data.streams import SeededBatchStream

from .distortions import ADDITION_SIZE, addition_pairs


class AdditionStream(SeededBatchStream):
    """On-the-fly MNIST addition batches: every pair, and both of its RTS distortions, fresh each time.

    **Convention**: ``images_uint8 [N, 28, 28]``, ``labels [N]`` (the training digits); :meth:`next_batch`
    returns ``x [batch_size, 2, 42, 42]`` float32 on ``device`` (quantised like the stored sets; channel 0
    holds the first digit, channel 1 the second, each with its own independent RTS distortion) and
    ``y [batch_size]`` int64 on ``device``, the sum of the two digits' labels (0..18).

    Each channel reads the digits through its own seeded per-epoch permutation (as
    :class:`~stn_repro.data.sets.DistortedStream` does), so each digit appears once per epoch in each channel
    and the pairs change every epoch; :attr:`epoch` counts the first channel's. ``state_dict()`` /
    ``load_state_dict()`` (:class:`~stn_repro.data.sets.SeededBatchStream`'s) capture both positions
    (``epochs``, ``positions``) and the distortion generator, so a resumed stream continues with exactly the
    batches it would have produced.
    ``last_params`` holds the true RTS parameters of the latest batch (:func:`addition_pairs`'s) and
    ``last_digit_labels [batch_size, 2]`` the two digits' labels.
    """

    kind = "AdditionStream"
    set_name = "addition"
    state_fields = ("kind", "set_name", "seed", "num_digits", "batch_size")
    checked_fields = ("kind", "set_name", "seed", "num_digits")

    def __init__(
        self,
        images_uint8: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device="cpu",
    ):
        _check_uint8_digits(images_uint8, labels)
        channels = [("addition", channel) for channel in ("first", "second")]  # one order per input channel
        super().__init__(labels, batch_size, seed, device, order_keys=channels)
        self.image_size = ADDITION_SIZE
        # Copy as uint8 (4x fewer bytes), convert on the device.
        self.digits = images_uint8.to(self.device).unsqueeze(1).float().div_(255.0)
        self._generator = self._derived_generator("distortions", "addition")
        self.last_params: dict[str, Tensor] | None = None
        self.last_digit_labels: Tensor | None = None

    def next_batch(self) -> tuple[Tensor, Tensor]:
        first, second = (order.take(self.batch_size) for order in self._orders)
        x, self.last_params = addition_pairs(self.digits[first], self.digits[second], self._generator)
        self.last_digit_labels = torch.stack([self.labels[first], self.labels[second]], dim=1)
        return x, self.last_digit_labels.sum(dim=1)
