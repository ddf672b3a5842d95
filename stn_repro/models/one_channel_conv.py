"""A convolution on one input channel whose input gradient is a matrix product, not a transposed convolution.

Behind a spatial transformer the classifier's first convolution (9x9, one channel in) needs the gradient of
its input: it flows back through the sampler to the localisation net. On the CPU, oneDNN computes that
gradient as a transposed convolution with a single output channel, which it does badly: 120-145 ms of a
256-image step of R ST-CNN, 4-7x the time of the same numbers computed as ``weight^T @ grad_out`` followed
by ``fold`` (col2im) (`benchmarks/bench_peak.py` and the measurements in ``OneChannelConv2d``'s docstring).

**Convention**: the same as ``nn.Conv2d`` with ``in_channels=1``, stride 1, no dilation, one group: input
``[B, 1, H, W]``, output ``[B, C, H + 2p - k + 1, W + 2p - k + 1]``. The values of the output and of every
gradient are the same as ``nn.Conv2d``'s up to float rounding (summation order).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _MatmulInputGradConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=padding)`` with the input gradient as a matrix product + fold."""

    generate_vmap_rule = True  # torch.func (the stacked-seeds engine) batches it like its plain ops

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_w or need_b:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out,
                x,
                weight,
                [weight.shape[0]] if ctx.has_bias else None,
                [1, 1],
                list(ctx.padding),
                [1, 1],
                False,
                [0, 0],
                1,
                [False, need_w, need_b and ctx.has_bias],
            )
        if need_x:
            channels, kh, kw = weight.shape[0], weight.shape[-2], weight.shape[-1]
            # d out[b, c, l] / d cols[b, k, l] = weight[c, k]: the columns' gradient, then col2im (fold).
            cols = weight.reshape(channels, kh * kw).t() @ grad_out.reshape(*grad_out.shape[:2], -1)
            grad_x = F.fold(cols, tuple(x.shape[-2:]), (kh, kw), padding=ctx.padding)
        return grad_x, grad_w, grad_b, None


class OneChannelConv2d(nn.Conv2d):
    """``nn.Conv2d(1, out_channels, kernel_size, padding=padding)`` whose input gradient, where one is
    needed, is computed as a matrix product and ``fold`` (see the module docstring). Same parameters and
    state dict as ``nn.Conv2d``.

    Measured on 2 CPU cores, batch 256, the input gradient alone: 9x9 to 88 channels on 28x28, oneDNN 129 ms,
    matrix product + fold 18 ms; 9x9 to 85 channels on 21x21 padded by 4, 117 ms against 33 ms.
    Where no input gradient is needed (the plain CNN's first layer, inference), off the CPU (not measured
    there) and under autocast (its backward would mix dtypes) it is ``nn.Conv2d``.
    """

    def __init__(self, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(1, out_channels, kernel_size, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"  # measured there only; a GPU's cuDNN keeps its own path
            and x.requires_grad
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and x.dim() == 4
        ):
            return _MatmulInputGradConv.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)
