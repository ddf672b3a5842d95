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


# Below this, a localisation net's largest per-parameter spread over images counts as none: a net whose
# last hidden layer is dead outputs its bias for every image, equal to the last bit (spread exactly 0),
# while any transformer that follows its input varies by orders of magnitude more.
COLLAPSED_SPREAD = 1e-6


def spread_collapsed(spread: Sequence[float] | None) -> bool:
    """Whether a :func:`localisation_spread` result shows a transformer that predicts one transform for
    every image (a value below :data:`COLLAPSED_SPREAD`); ``False`` for ``None`` or ``[]``."""
    return any(value < COLLAPSED_SPREAD for value in spread or [])


@torch.no_grad()
def localisation_spread(model: nn.Module, images: Tensor) -> list[float]:
    """How much each spatial transformer's predicted parameters vary over ``images``.

    For every :class:`SpatialTransformer` in ``model`` (module order): the largest standard deviation, over
    the images, of one of its predicted parameters (each of ``num_transforms`` parameter sets counted).
    A value below :data:`COLLAPSED_SPREAD` says the localisation net predicts one transform for every image
    (e.g. every ReLU of a hidden layer dead): the transformer has become a fixed warp, and the model is a
    plain classifier behind it. ``[]`` for a model without transformers.

    **Convention**: ``images`` ``[B, C, H, W]`` with ``B >= 2``, as the model takes them (uint8 is scaled
    by 1/255); ``model`` runs once in eval mode (its mode restored after) and every transformer's
    ``last_params`` is read.
    """
    transformers = [m for m in model.modules() if isinstance(m, SpatialTransformer)]
    if not transformers:
        return []
    if images.shape[0] < 2:
        raise ValueError(f"the spread of predicted parameters needs at least 2 images, got {images.shape[0]}")
    was_training = model.training
    model.eval()
    try:
        model(images.float() / 255.0 if images.dtype == torch.uint8 else images)
    finally:
        model.train(was_training)
    spreads = []
    for transformer in transformers:
        params = transformer.last_params
        spreads.append(float(params.reshape(params.shape[0], -1).double().std(0).max()))
    return spreads
