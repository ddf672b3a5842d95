"""Localisation networks: image or feature map -> transformation parameters (Sect. 3.1).

Each builder ends in a :class:`RegressionHead` whose weights start at zero and whose bias holds the initial
parameters (the family's identity, or e.g. a tiling of parallel transformers over the image), so a new
spatial transformer starts as the identity and the classifier trains from the first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class RegressionHead(nn.Linear):
    """The final regression layer: zero weights, bias = ``initial`` parameters (spec Sect. 1, appendix)."""

    def __init__(self, in_features: int, initial: Tensor):
        initial = torch.as_tensor(initial, dtype=torch.float32).reshape(-1)
        super().__init__(in_features, initial.numel())
        self.register_buffer("initial", initial.clone(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if hasattr(self, "initial"):
            with torch.no_grad():
                self.bias.copy_(self.initial)


def mlp_localisation(
    in_shape: Sequence[int], initial: Tensor, hidden: Sequence[int] = (32, 32, 32)
) -> nn.Sequential:
    """Fully connected localisation net: flatten -> ``hidden`` ReLU layers -> regression head.

    The paper's ST-FCN uses three 32-unit hidden layers; SVHN's ST-CNN Multi uses ``fc[32]-fc[32]`` on the
    feature maps. ``in_shape`` is ``(C, H, W)`` of one input.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(in_shape)
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True)]
        width = units
    layers.append(RegressionHead(width, initial))
    return nn.Sequential(*layers)


def cnn_localisation(
    in_shape: Sequence[int],
    initial: Tensor,
    channels: Sequence[int] = (20, 20),
    kernel_size: int = 5,
    padding: int = 0,
    pool_after: Sequence[bool] = (True, False),
    fc: Sequence[int] = (20,),
    downsample: int = 2,
) -> nn.Sequential:
    """Convolutional localisation net.

    Defaults are the paper's ST-CNN (MNIST): input average-pooled by ``downsample`` (2), conv 20 5x5 -> 2x2
    max-pool -> conv 20 5x5 -> fc 20 -> regression head, ReLU after every conv and fc. ``pool_after[i]``
    puts a 2x2 max-pool after conv ``i`` (before its ReLU, which gives the same result). ``in_shape`` is ``(C, H, W)`` of one input.
    """
    if len(pool_after) != len(channels):
        raise ValueError(
            f"pool_after needs one flag per conv layer ({len(channels)}), got {list(pool_after)}"
        )
    layers: list[nn.Module] = [nn.AvgPool2d(downsample)] if downsample > 1 else []
    width = in_shape[0]
    for out_channels, pool in zip(channels, pool_after, strict=True):
        layers.append(nn.Conv2d(width, out_channels, kernel_size, padding=padding))
        if pool:
            # Max-pool, then ReLU: the same values and gradients on a quarter of the elements; out of place,
            # since in place on a pooled output makes vmap (stacked seeds) copy it.
            layers += [nn.MaxPool2d(2), nn.ReLU()]
        else:
            layers.append(nn.ReLU(inplace=True))
        width = out_channels
    layers.append(nn.Flatten())
    features = _output_numel(nn.Sequential(*layers), in_shape)
    for units in fc:
        layers += [nn.Linear(features, units), nn.ReLU(inplace=True)]
        features = units
    layers.append(RegressionHead(features, initial))
    return nn.Sequential(*layers)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _output_numel(net: nn.Module, in_shape: Sequence[int]) -> int:
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *in_shape))
    except RuntimeError as error:
        raise ValueError(f"input {tuple(in_shape)} is too small for this localisation net: {error}") from None
    if out.numel() == 0:
        raise ValueError(f"input {tuple(in_shape)} is too small for this localisation net")
    return out.shape[1]
