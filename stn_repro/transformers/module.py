"""The spatial transformer module: localisation net + transform family + sampler (Sect. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .families import TransformFamily
from .sampler import sample


class SpatialTransformer(nn.Module):
    """Warps its input with parameters that its localisation net predicts from that input.

    **Convention**: input ``[B, C, H, W]`` (an image or a feature map); the output is
    ``[B, C, H', W']`` with ``(H', W') = output_size`` (default: the input's size). With
    ``num_transforms = N > 1`` the localisation net predicts ``N`` parameter sets at once (one shared net,
    as the paper's CUB models) and the output is ``[B, N, C, H', W']``: one warped copy per transform.
    Coordinates, axis order and align_corners are those of ``family`` (see :mod:`.families`).

    After every forward pass ``last_params`` holds the predicted parameters, detached,
    ``[B, num_params]`` (or ``[B, N, num_params]``), for inspection and visualisation.

    Series composition is ``nn.Sequential(st1, st2)``; parallel composition, each transformer with its own
    localisation net and outputs concatenated on channels, is :class:`ParallelTransformers`.
    """

    def __init__(
        self,
        localisation: nn.Module,
        family: TransformFamily,
        output_size: Sequence[int] | None = None,
        *,
        num_transforms: int = 1,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        fill: float = 0.0,
    ):
        super().__init__()
        if num_transforms < 1:
            raise ValueError(f"num_transforms must be >= 1, got {num_transforms}")
        self.localisation = localisation
        self.family = family
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.num_transforms = num_transforms
        self.mode, self.padding_mode, self.fill = mode, padding_mode, fill
        self.last_params: Tensor | None = None

    def forward(self, x: Tensor, localisation_input: Tensor | None = None) -> Tensor:
        """Warp ``x``; the localisation net reads ``localisation_input`` if given, else ``x``."""
        params = self.localisation(x if localisation_input is None else localisation_input)
        batch, n, p = x.shape[0], self.num_transforms, self.family.num_params
        if params.shape != (batch, n * p):
            raise ValueError(
                f"the localisation net returned {tuple(params.shape)}; {self.family.name} with "
                f"num_transforms={n} needs [{batch}, {n * p}]"
            )
        size = self.output_size or tuple(x.shape[-2:])
        if n > 1:
            x = x.unsqueeze(1).expand(batch, n, *x.shape[1:]).reshape(batch * n, *x.shape[1:])
        grid = self.family.grid(params.reshape(batch * n, p), size)
        out = sample(
            x,
            grid,
            mode=self.mode,
            padding_mode=self.padding_mode,
            fill=self.fill,
            align_corners=self.family.align_corners,
        )
        self.last_params = params.detach().reshape(batch, n, p) if n > 1 else params.detach()
        return out.reshape(batch, n, *out.shape[1:]) if n > 1 else out

    def extra_repr(self) -> str:
        return (
            f"family={self.family!r}, output_size={self.output_size}, num_transforms={self.num_transforms}, "
            f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"
        )


class ParallelTransformers(nn.ModuleList):
    """Several spatial transformers on the same input; their outputs are concatenated on channels.

    As the paper's 2xST-FCN for MNIST addition: two transformers each see both channels and warp both,
    giving 4 channels for the classifier.
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([transformer(x) for transformer in self], dim=1)
