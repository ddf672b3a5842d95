"""SVHN training batches: a seeded epoch order and random 54 x 54 crops, resumed exactly."""

from __future__ import annotations

import torch
from torch import Tensor

from stn_repro.data.streams import SeededBatchStream
from stn_repro.data.svhn.crops import MAX_DIGITS


class SvhnStream(SeededBatchStream):
    """Training batches of a stored SVHN set with Goodfellow's random crops, the interface of
    :class:`~stn_repro.data.sets.DistortedStream`.

    **Convention**: ``images_uint8 [N, 3, S, S]``, ``labels [N, 5]``; :meth:`next_batch` returns
    ``x [batch_size, 3, crop, crop]`` float32 in ``[0, 1]`` on ``device`` and ``y [batch_size, 5]`` int64
    on ``device``. The images go through seeded per-epoch permutations (a batch that reaches the end of an
    epoch is completed from the next); each image of a batch gets a crop position drawn uniformly from a
    CPU generator seeded from ``seed`` (``crop=None``: the whole image). The images stay on ``device`` as
    uint8. ``state_dict()`` / ``load_state_dict()`` (:class:`~stn_repro.data.sets.SeededBatchStream`'s)
    capture the position and the generator, so a resumed stream continues with exactly the batches it would
    have produced.
    """

    kind = "SvhnStream"
    state_fields = ("kind", "seed", "num_images", "batch_size", "crop")
    checked_fields = ("kind", "seed", "num_images", "crop")

    def __init__(
        self,
        images_uint8: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device="cpu",
        crop: int | None = 54,
    ):
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [N, 3, S, S], got {images_uint8.dtype} {tuple(images_uint8.shape)}"
            )
        if labels.shape != (len(images_uint8), MAX_DIGITS):
            raise ValueError(
                f"labels must be [N, {MAX_DIGITS}] with N={len(images_uint8)}, got {tuple(labels.shape)}"
            )
        super().__init__(labels, batch_size, seed, device)
        if crop is not None and not 0 < crop <= min(images_uint8.shape[-2:]):
            raise ValueError(f"crop {crop} does not fit images of {tuple(images_uint8.shape[-2:])}")
        self.crop = crop
        self.image_size = images_uint8.shape[-1]
        self.images = images_uint8.to(self.device)
        self._generator = self._derived_generator("svhn-crops")
        if crop is not None:
            self._span = torch.arange(crop, device=self.device)
            self._channels = torch.arange(3, device=self.device).view(1, 3, 1, 1)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        index = self._order.take(self.batch_size)
        if self.crop is None:
            images = self.images[index]
        else:
            height, width = self.images.shape[-2:]
            offset_y = torch.randint(0, height - self.crop + 1, (len(index),), generator=self._generator)
            offset_x = torch.randint(0, width - self.crop + 1, (len(index),), generator=self._generator)
            rows = offset_y.to(self.device).view(-1, 1, 1, 1) + self._span.view(1, 1, -1, 1)
            cols = offset_x.to(self.device).view(-1, 1, 1, 1) + self._span.view(1, 1, 1, -1)
            # One gather straight from the stored images: [B, 3, crop, crop], contiguous.
            images = self.images[index.view(-1, 1, 1, 1), self._channels, rows, cols]
        return images.float().div_(255.0), self.labels[index]
