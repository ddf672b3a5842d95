"""Seeds that make every random draw of the suite reproducible: derived seeds and seeded epoch orders.

**Convention**: a seed is an ``int``; :func:`derive_seed` makes an independent 63-bit seed for every purpose
(a set, a split, an epoch, a stream) from a base seed and any number of keys, so adding a new use of
randomness never shifts the draws of the existing ones.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys``: independent streams for every purpose, set, epoch."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class EpochOrder:
    """Seeded per-epoch permutations of ``count`` items, consumed in batches that may span two epochs."""

    def __init__(self, count: int, seed: int, device: torch.device):
        if count < 1:
            raise ValueError("need at least one digit")
        self.count, self.seed, self.device = count, seed, device
        self.epoch, self.position = 0, 0
        self._order: Tensor | None = None

    def take(self, size: int) -> Tensor:
        parts = []
        while size > 0:
            if self._order is None:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch-order", self.epoch))
                # One host->device copy per epoch (non_blocking: no wait for queued kernels); batches then
                # index on the device.
                self._order = torch.randperm(self.count, generator=generator).to(
                    self.device, non_blocking=True
                )
            part = self._order[self.position : self.position + size]
            parts.append(part)
            size -= len(part)
            self.position += len(part)
            if self.position == self.count:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def load(self, epoch: int, position: int) -> None:
        if not (0 <= position < self.count):
            raise ValueError(f"position {position} is outside an epoch of {self.count} digits")
        self.epoch, self.position, self._order = int(epoch), int(position), None
