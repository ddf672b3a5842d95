"""Other ways to compute the bfloat16 step's heavy operators, each timed against the engine's, in one process.

The conv cells' bfloat16 steps reach a tenth to a third of this CPU's bfloat16 peak (``bench_peak.py``); their
time is mostly oneDNN's convolutions and max-pooling. This bench asks whether another formulation of the
same numbers is faster here, operator by operator, at every convolution and pooling shape of the given cells
(batch 256, channels-last, under ``torch.autocast("cpu", dtype=torch.bfloat16)`` as training runs):

- **engine**: ``F.conv2d`` forward and backward as oneDNN runs them, split into forward, input gradient
  (where training needs it) and weight + bias gradient;
- **weight gradient as a forward convolution** (``CpuConv2d``'s where the output is 5x5 or smaller): the
  weight gradient is a correlation of the input with the output gradient, which is a forward convolution
  with the batch and channel axes swapped; the bias gradient ``ones @ grad_out``;
- **one-channel weight gradient as im2col + one matrix product** (``CpuConv2d``'s for one input channel);
- **im2col + one matrix product** per pass, in NHWC (the output of the forward product is NHWC already);
  the input gradient is folded back (col2im) with ``F.fold``;
- **max-pooling 2x2** as four strided slices, their maxima and the first maximum's position (the same
  values and gradients as ``F.max_pool2d``, which the bench checks), against ``F.max_pool2d``.

Each line prints the milliseconds of the engine and of each alternative, and the ratio (alternative time
over engine time, the weight gradients' over oneDNN's weight and bias gradients: below 1 is faster). The largest difference from the engine's result is printed beside it
(bfloat16 rounding: a few units in the last place of the largest value).

    python benchmarks/bench_conv_paths.py --threads 1 --cells r/cnn,r/st_cnn:affine,rts/cnn --out results/bench
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root
from benchmarks.bench_mnist import make_learner, parse_cells
from benchmarks.bench_peak import conv_shapes, mean_ms, report_header
from stn_repro.data import load_mnist, synthetic_mnist
from stn_repro.data.files import default_data_dir
from stn_repro.models.cpu_conv import bias_grad, weight_grad_as_forward_conv, weight_grad_one_channel
from stn_repro.training.records import git_commit
from stn_repro.training.settings import SpeedSettings

BF16 = torch.bfloat16
CL = torch.channels_last


def largest_difference(a: Tensor, b: Tensor) -> str:
    a, b = a.float(), b.float()
    return f"{(a - b).abs().max().item():.3g} of {a.abs().max().item():.3g}"


class ConvCase:
    """One convolution of a cell, its tensors in bfloat16 and channels-last, as autocast hands them over."""

    def __init__(self, shape: tuple[int, ...], conv: nn.Conv2d, input_grad: bool):
        self.input_grad = input_grad
        self.k, self.pad = conv.kernel_size[0], conv.padding[0]
        self.x = torch.randn(shape).to(BF16).contiguous(memory_format=CL)
        self.w = conv.weight.detach().to(BF16).contiguous(memory_format=CL)
        self.b = conv.bias.detach().to(BF16)
        out = F.conv2d(self.x, self.w, self.b, padding=self.pad)
        self.g = torch.randn(out.shape).to(BF16).contiguous(memory_format=CL)
        kernel = f"{self.k}x{self.k}"
        self.name = f"conv {kernel} {conv.in_channels}->{conv.out_channels} on {shape[2]}x{shape[3]}" + (
            "" if input_grad else " (no dx)"
        )

    # The engine: oneDNN through aten.
    def forward(self) -> Tensor:
        return F.conv2d(self.x, self.w, self.b, padding=self.pad)

    def backward(self, mask: tuple[bool, bool, bool]) -> tuple:
        return torch.ops.aten.convolution_backward(
            self.g,
            self.x,
            self.w,
            [self.w.shape[0]],
            [1, 1],
            [self.pad] * 2,
            [1, 1],
            False,
            [0, 0],
            1,
            list(mask),
        )

    # The weight gradient as a forward convolution (the library's, which CpuConv2d runs where the output is
    # small); the bias gradient a sum.
    def weight_grad_as_forward(self) -> tuple[Tensor, Tensor]:
        return weight_grad_as_forward_conv(self.x, self.g, (self.pad, self.pad)), bias_grad(self.g)

    # The one-channel weight gradient as im2col + one matrix product (the library's); one channel only.
    def weight_grad_im2col(self) -> tuple[Tensor, Tensor]:
        kernel, padding = (self.k, self.k), (self.pad, self.pad)
        return weight_grad_one_channel(self.x, self.g, kernel, padding), bias_grad(self.g)

    # im2col in NHWC: one row per output pixel, (kh, kw, C_in) per column.
    def columns(self) -> Tensor:
        x = self.x.permute(0, 2, 3, 1)  # NHWC view of the channels-last tensor
        if self.pad:
            x = F.pad(x, (0, 0, self.pad, self.pad, self.pad, self.pad))
        patches = x.unfold(1, self.k, 1).unfold(2, self.k, 1)  # [B, h, w, C_in, kh, kw]
        b, h, w = patches.shape[:3]
        return patches.permute(0, 1, 2, 4, 5, 3).reshape(b * h * w, -1)

    def matmul_weight(self) -> Tensor:
        return self.w.permute(0, 2, 3, 1).reshape(self.w.shape[0], -1)  # [C_out, (kh, kw, C_in)]

    def matmul_pass(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Forward, weight gradient and (where needed) input gradient, each one matrix product."""
        cols, weight = self.columns(), self.matmul_weight()
        out = torch.addmm(self.b, cols, weight.t())  # [B*h*w, C_out]: NHWC
        g = self.g.permute(0, 2, 3, 1).reshape(-1, weight.shape[0])
        grad_w = g.t() @ cols
        grad_x = None
        if self.input_grad:
            batch, size = self.x.shape[0], self.x.shape[-1] + 2 * self.pad
            dcols = (g @ weight).view(batch, -1, weight.shape[1]).transpose(1, 2)  # [B, (kh, kw, C_in), L]
            c_in = self.x.shape[1]
            # F.fold wants (C_in, kh, kw) per column: reorder the column axis.
            dcols = (
                dcols.reshape(batch, self.k * self.k, c_in, -1)
                .transpose(1, 2)
                .reshape(batch, -1, dcols.shape[-1])
            )
            grad_x = F.fold(dcols.float(), (size, size), self.k)
        return out, grad_w, grad_x


def exact_max_pool_2x2(x: Tensor) -> tuple[Tensor, Tensor]:
    """2x2 max-pooling (stride 2) from four strided slices: the maxima and, for the backward pass, the
    position of the first maximum in each window (row-major, as ``F.max_pool2d`` picks on ties). An odd
    last row or column is dropped, as ``F.max_pool2d`` drops it."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    a, b, c, d = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
    top, bottom = torch.maximum(a, b), torch.maximum(c, d)
    lower = bottom > top
    position = torch.where(lower, 2 + (d > c).to(torch.uint8), (b > a).to(torch.uint8))
    return torch.where(lower, bottom, top), position


def exact_max_pool_2x2_backward(grad: Tensor, position: Tensor, size: tuple[int, int]) -> Tensor:
    """The input gradient of :func:`exact_max_pool_2x2`: each output's gradient to its first maximum."""
    h, w = grad.shape[-2:]
    pattern = torch.tensor([[0, 1], [2, 3]], dtype=torch.uint8).repeat(h, w)
    chosen = F.interpolate(position.to(grad.dtype), scale_factor=2, mode="nearest") == pattern.to(grad.dtype)
    even = torch.where(chosen, F.interpolate(grad, scale_factor=2, mode="nearest"), 0)
    return F.pad(even, (0, size[1] - 2 * w, 0, size[0] - 2 * h))


def conv_line(case: ConvCase, calls: int) -> str:
    fwd = mean_ms(case.forward, calls)
    dx = mean_ms(lambda: case.backward((True, False, False)), calls) if case.input_grad else 0.0
    dw = mean_ms(lambda: case.backward((False, True, True)), calls)
    engine = fwd + dx + dw
    trick = mean_ms(case.weight_grad_as_forward, calls)
    matmul = mean_ms(case.matmul_pass, calls)
    onednn_w = case.backward((False, True, False))[1]
    trick_diff = largest_difference(onednn_w, case.weight_grad_as_forward()[0])
    im2col = "-"
    if case.x.shape[1] == 1:
        ms = mean_ms(case.weight_grad_im2col, calls)
        im2col = f"{ms:.1f} {ms / dw:.2f}x {largest_difference(onednn_w, case.weight_grad_im2col()[0])}"
    reference = case.forward()
    out = case.matmul_pass()[0].view(reference.shape[0], *reference.shape[2:], -1).permute(0, 3, 1, 2)
    return (
        f"{case.name:44s} {fwd:6.1f} {dx:6.1f} {dw:6.1f} {engine:7.1f} | {trick:9.1f} {trick / dw:5.2f}x "
        f"{trick_diff:>16s} | {im2col:>28s} | {matmul:7.1f} {matmul / engine:5.2f}x "
        f"{largest_difference(reference, out):>16s}"
    )


def pool_line(shape: tuple[int, ...], calls: int) -> str:
    x = torch.randn(shape).to(BF16).contiguous(memory_format=CL).requires_grad_()
    grad = torch.randn(*shape[:2], shape[2] // 2, shape[3] // 2).to(BF16).contiguous(memory_format=CL)

    def engine_pool() -> Tensor:
        x.grad = None
        F.max_pool2d(x, 2).backward(grad)
        return x.grad

    def slices_pool() -> tuple[Tensor, Tensor]:
        values, position = exact_max_pool_2x2(x.detach())
        return values, exact_max_pool_2x2_backward(grad, position, shape[-2:])

    values, grads = slices_pool()
    same = torch.equal(F.max_pool2d(x.detach(), 2), values) and torch.equal(engine_pool(), grads)
    ours, theirs = mean_ms(slices_pool, calls), mean_ms(engine_pool, calls)
    return f"{list(shape)!s:28s} {theirs:12.1f} {ours:8.1f} {ours / theirs:5.2f}x  {same}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", default="r/cnn,r/st_cnn:affine,rts/cnn", help="data/model list")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=6, help="timed calls per operator (mean)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--synthetic", action="store_true", help="synthetic digits (no MNIST needed)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the report to a file in this folder"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    digits = synthetic_mnist(seed=0) if args.synthetic else load_mnist(default_data_dir())
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(report_header("bench_conv_paths", args.batch_size, f"bf16, channels-last | cells {args.cells}"))
    convs: dict[tuple, ConvCase] = {}
    pools: set[tuple[int, ...]] = set()
    speed = SpeedSettings(channels_last=True, autocast="bf16")
    for cell in parse_cells(args.cells):
        learner = make_learner(digits, *cell, args.batch_size, 1, torch.device("cpu"), speed)
        x, _ = learner.stream.next_batch()
        for shape, conv, input_grad in conv_shapes(learner.model, x):
            convs.setdefault(
                (shape, tuple(conv.weight.shape), conv.padding, input_grad), (shape, conv, input_grad)
            )
        hooks = [
            m.register_forward_pre_hook(lambda mod, inputs: pools.add(tuple(inputs[0].shape)))
            for m in learner.model.modules()
            if isinstance(m, nn.MaxPool2d)
        ]
        with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
            learner.model(x)
        for hook in hooks:
            hook.remove()

    say("\n## Convolutions: ms per call; ratio = alternative / engine (below 1: faster)")
    say(
        f"{'operator':44s} {'fwd':>6s} {'dx':>6s} {'dW+db':>6s} {'engine':>7s} | {'dW as fwd':>9s} {'ratio':>6s} "
        f"{'diff':>16s} | {'dW im2col: ms, ratio, diff':>28s} | {'im2col':>7s} {'ratio':>6s} {'diff (out)':>16s}"
    )
    for shape, conv, input_grad in convs.values():
        say(conv_line(ConvCase(shape, conv, input_grad), args.calls))

    say("\n## Max-pooling 2x2, forward and backward: ms per call")
    say(f"{'input':28s} {'F.max_pool2d':>12s} {'slices':>8s} {'ratio':>6s}  same values and gradients")
    for shape in sorted(pools):
        say(pool_line(shape, args.calls))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"bench_conv_paths_cpu_{datetime.now(UTC):%Y-%m-%d_%H%M}_{git_commit()[:7]}.txt"
        path.write_text("\n".join(lines) + "\n")
        print(f"written to {path}")


if __name__ == "__main__":
    main()
