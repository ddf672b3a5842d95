"""A convolution whose gradients take, on the CPU, the formulation measured fastest there for its shape.

oneDNN computes a convolution's gradients much more slowly than its forward pass at the shapes of the
distorted-MNIST CNNs, so :class:`CpuConv2d` computes them as other operators that give the same numbers (up
to float rounding). ``benchmarks/bench_conv_paths.py`` times each against oneDNN, operator by operator;
``benchmarks/bench_peak.py --versus onednn-weight-grad`` the whole training step with and without them.

- **One input channel, input gradient** (the classifier's first 9x9 convolution behind a spatial
  transformer: its input gradient flows back through the sampler to the localisation net). oneDNN runs it as
  a transposed convolution with one output channel; ``weight^T @ grad_out`` and ``fold`` (col2im) is 4-7x
  faster in float32 (9x9 to 88 channels on 28x28, 2 threads: 129 ms against 18 ms). Float32 only: under
  bfloat16 autocast oneDNN's path is kept (its fold would add up in bfloat16).
- **One input channel, weight gradient** (every first convolution): the image's 9x9 patches as rows
  (im2col, in NHWC order, so that a channels-last output gradient needs no copy) and one matrix product,
  ``grad_out^T @ patches``; the bias gradient a vector-matrix product, ``ones @ grad_out`` (in bfloat16 4x
  faster than the reduction ``grad_out.sum((0, 2, 3))`` in a trial here with the other core busy).
- **Small output, weight gradient** (the 7x7 convolution of R, P and E, whose output is 4x4 or 5x5): the
  correlation of the input with the output gradient summed over the batch, i.e. a forward convolution of the
  input, batch and channel axes swapped, by the output gradient taken as kernels. Where the output has at
  most :data:`SMALL_OUTPUT` positions oneDNN's forward kernels run that about 3x faster than its
  weight-gradient kernel (bfloat16, batch 256, one thread: 7x7 89->89 on 10x10, 22.5 ms against 7.0 ms); on
  larger outputs slower (9x9 and up: 1.2-7x), so oneDNN keeps those.

The two weight-gradient formulations run only where the convolution runs in bfloat16 (under autocast): there
the whole training step measured 1.03-1.23x faster with them; in float32 it was not faster (0.93-1.08x).

**Convention**: the same as ``nn.Conv2d`` with stride 1, no dilation and one group: input ``[B, C_in, H,
W]``, output ``[B, C_out, H + 2p - k + 1, W + 2p - k + 1]``, in either memory layout (contiguous or
channels-last). Under CPU autocast the convolution runs in the autocast dtype, as ``nn.Conv2d`` does, and
the gradients return to the parameters' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The weight gradient is a forward convolution where the output has at most this many positions (5x5).
SMALL_OUTPUT = 25


def weight_grad_as_forward_conv(x: Tensor, grad_out: Tensor, padding: tuple[int, int]) -> Tensor:
    """``d loss / d weight`` of ``F.conv2d(x, weight, padding=padding)`` given ``grad_out``, as one forward
    convolution: ``dW[o, i] = sum_b x[b, i] (*) grad_out[b, o]`` (cross-correlation), so the batch becomes the
    reduced channel axis. Shapes: ``x [B, C_in, H, W]``, ``grad_out [B, C_out, h, w]`` -> ``[C_out, C_in,
    H + 2p - h + 1, W + 2p - w + 1]`` (the kernel's size); channels-last in and out (measured faster)."""
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    return F.conv2d(_batch_as_channels(x), _batch_as_channels(grad_out)).transpose(0, 1)


def _batch_as_channels(t: Tensor) -> Tensor:
    """``t.transpose(0, 1)`` laid out channels-last (the batch innermost), built from a plain ``contiguous``
    so that it also runs under vmap (the stacked-seeds engine), which cannot make a channels-last copy."""
    return t.permute(1, 2, 3, 0).contiguous().permute(0, 3, 1, 2)


def weight_grad_one_channel(x: Tensor, grad_out: Tensor, kernel: tuple[int, int], padding) -> Tensor:
    """``d loss / d weight`` of ``F.conv2d(x, weight, padding=padding)`` for one input channel: the patches of
    ``x`` as rows (im2col, in the (b, y, x) order of a channels-last ``grad_out``) and one matrix product.
    Shapes: ``x [B, 1, H, W]``, ``grad_out [B, C_out, h, w]`` -> ``[C_out, 1, kh, kw]``."""
    (kh, kw), channels = kernel, grad_out.shape[1]
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    patches = x[:, 0].unfold(1, kh, 1).unfold(2, kw, 1).reshape(-1, kh * kw)  # [B * h * w, kh * kw]
    rows = grad_out.permute(0, 2, 3, 1).reshape(-1, channels)  # [B * h * w, C_out]: a view if channels-last
    return (rows.t() @ patches).view(channels, 1, kh, kw)


def bias_grad(grad_out: Tensor) -> Tensor:
    """``d loss / d bias``: ``grad_out [B, C_out, h, w]`` summed over batch and positions, as one
    vector-matrix product (4x faster than ``grad_out.sum((0, 2, 3))`` in bfloat16, in a trial with the other core busy)."""
    rows = grad_out.permute(0, 2, 3, 1).reshape(-1, grad_out.shape[1])  # a view if channels-last
    return (rows.new_ones(1, rows.shape[0]) @ rows)[0]


def input_grad_one_channel(weight: Tensor, grad_out: Tensor, size: tuple[int, int], padding) -> Tensor:
    """``d loss / d x`` of ``F.conv2d(x, weight, padding=padding)`` for one input channel, as a matrix product
    and ``fold``: ``d out[b, c, l] / d cols[b, k, l] = weight[c, k]``, then col2im."""
    channels, kh, kw = weight.shape[0], weight.shape[-2], weight.shape[-1]
    cols = weight.reshape(channels, kh * kw).t() @ grad_out.reshape(*grad_out.shape[:2], -1)
    return F.fold(cols, size, (kh, kw), padding=padding)


class _CpuConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=padding)`` with the gradients of the module docstring."""

    generate_vmap_rule = True  # torch.func (the stacked-seeds engine) batches it like its plain ops

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], fast_weight_grad: bool
    ) -> Tensor:
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias, padding, fast_weight_grad = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        small = output.shape[-2] * output.shape[-1] <= SMALL_OUTPUT
        # How the weight gradient is computed: "im2col", "forward conv" or "onednn".
        ctx.weight_grad = (
            "onednn"
            if not fast_weight_grad
            else "im2col"
            if x.shape[1] == 1
            else "forward conv"
            if small
            else "onednn"
        )

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        grad_x = grad_w = grad_b = None
        # The one-channel input gradient by matrix product: float32 and float64 (gradcheck) only.
        input_matmul = need_x and x.shape[1] == 1 and x.dtype in (torch.float32, torch.float64)
        weight_onednn = ctx.weight_grad == "onednn"
        mask = [need_x and not input_matmul, need_w and weight_onednn, need_b and weight_onednn]
        if any(mask):
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
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
                mask,
            )
        if input_matmul:
            grad_x = input_grad_one_channel(weight, grad_out, tuple(x.shape[-2:]), ctx.padding)
        if not weight_onednn:
            if need_w:
                # In whatever layout the product gives: autograd lays it out as the weight is.
                grad_w = (
                    weight_grad_one_channel(x, grad_out, tuple(weight.shape[-2:]), ctx.padding)
                    if ctx.weight_grad == "im2col"
                    else weight_grad_as_forward_conv(x, grad_out, ctx.padding)
                )
            if need_b:
                grad_b = bias_grad(grad_out)
        return grad_x, grad_w, grad_b, None, None


class CpuConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)`` (stride 1) whose gradients, on
    the CPU, take the formulations of the module docstring. Same parameters and state dict as ``nn.Conv2d``.

    The weight-gradient formulations run in bfloat16 only (the module docstring); ``fast_weight_grad =
    False`` leaves every weight gradient to oneDNN (``benchmarks/bench_peak.py --versus
    onednn-weight-grad`` times the cells so). Off the CPU (not measured there) and where no gradient is
    wanted it is ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.fast_weight_grad = True

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not torch.is_grad_enabled() or x.dim() != 4:
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):
            # Cast as autocast would, outside the Function: its backward then sees one dtype, and autograd
            # returns the gradients to the float32 parameters.
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        fast_weight_grad = self.fast_weight_grad and x.dtype == torch.bfloat16
        return _CpuConv2d.apply(x, weight, bias, self.padding, fast_weight_grad)
