"""Distorted-MNIST training steps against this CPU's own limit: achieved GFLOP/s and fraction of peak.

In one process, with the same threads:

1. **Peak, in float32 and in bfloat16.** A square matmul (``--matmul-size``), and every convolution shape of
   the benchmarked cells' models at the training batch, forward and backward (input and weight gradients),
   each timed alone, once in float32 and once under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (as
   ``trainer.autocast=bf16`` trains; in the cells' memory layout). Each precision's peak is the best of its
   column: what this CPU reaches on these very operators. On a CPU with AMX tiles the bfloat16 peak is
   several times the float32 one.
2. **Per cell.** The FLOPs of one training step of the engine (forward and backward; counted by
   ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, the work that bounds
   these models), its measured time (``SingleModel.step``, exactly what training runs), and so the
   achieved GFLOP/s and the fraction of the peak of the precision the step runs in (``--autocast``), and of
   the bfloat16 peak (this machine's limit).
3. **Where the time goes** (``--profile``): the step split into its phases (distortions, forward, backward,
   optimiser), each timed, and the operators' own time from ``torch.profiler``, grouped as the first
   convolution (9x9 on one channel), the other convolutions, pooling, the sampler (``grid_sample``),
   linear layers, element-wise work and the optimiser.

    python benchmarks/bench_peak.py                               # R and RTS CNN and ST-CNN affine
    python benchmarks/bench_peak.py --cells all --profile --out results/bench/
    python benchmarks/bench_peak.py --channels-last --cells r/cnn # a speed setting against the default
    python benchmarks/bench_peak.py --autocast bf16 --versus float32 # bfloat16 steps against float32 here

The FLOP count ignores element-wise work, pooling and sampling (they are memory bound, and counted by time
in the profile): the fraction of peak says how well the step uses the arithmetic units, not more.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root
from benchmarks.bench_mnist import (
    describe,
    make_learner,
    parse_cells,
    speed_settings,
    time_learner,
)
from stn_repro.data import load_mnist, synthetic_mnist
from stn_repro.data.files import default_data_dir
from stn_repro.models.cpu_conv import CpuConv2d
from stn_repro.training.records import git_commit
from stn_repro.training.settings import COMPILE_MODES, cpu_bf16_flags, cpu_model

DEFAULT_CELLS = "r/cnn,r/st_cnn:affine,rts/cnn,rts/st_cnn:affine"


@dataclass
class Rate:
    name: str
    flops: float  # per call
    ms: float  # per call

    @property
    def gflops(self) -> float:
        return self.flops / (self.ms / 1e3) / 1e9


def mean_ms(call, calls: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return 1e3 * (time.perf_counter() - start) / calls


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model and its native bfloat16 flags, e.g. ``AMD EPYC (bf16: avx512_bf16)``: what decides
    the bfloat16 column (``platform.processor()`` is empty on Linux)."""
    return f"{cpu_model(cpuinfo)} (bf16: {', '.join(cpu_bf16_flags(cpuinfo)) or 'emulated'})"


def report_header(bench: str, batch_size: int, settings: str) -> str:
    """A bench report's first line: when, which commit, which machine, threads, batch and settings."""
    return (
        f"# {bench} {datetime.now(UTC):%Y-%m-%d %H:%M} UTC | commit {git_commit()[:12]} | {cpu_name()} | "
        f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
        f"{torch.get_num_threads()} threads | batch {batch_size} | {settings}"
    )


def counted_flops(call) -> float:
    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


PRECISIONS = ("float32", "bf16")


def matmul_rate(n: int, calls: int, precision: str = "float32") -> Rate:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return Rate(f"matmul {n}x{n}", 2.0 * n**3, mean_ms(lambda: a @ b, calls, 2))


def conv_shapes(model: nn.Module, example: torch.Tensor) -> list[tuple[tuple[int, ...], nn.Conv2d, bool]]:
    """Each ``Conv2d`` of ``model`` with the input shape it sees for ``example`` and whether training needs
    the gradient of that input (not where it is the data itself): one forward pass, with autograd on."""
    seen: list[tuple[tuple[int, ...], nn.Conv2d, bool]] = []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args: seen.append((tuple(args[0].shape), mod, args[0].requires_grad))
        )
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    model(example)
    for hook in hooks:
        hook.remove()
    return seen


def conv_rate(
    shape: tuple[int, ...],
    conv: nn.Conv2d,
    input_grad: bool,
    calls: int,
    precision: str = "float32",
    channels_last: bool = False,
) -> Rate:
    """One convolution forward and backward alone, at ``shape``, as training computes it: the weight and
    bias gradients, and the input gradient where training needs it; in ``precision`` (``bf16``: under CPU
    autocast, float32 parameters and input cast to bfloat16 by the convolution, as training runs it)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).to(memory_format=layout).requires_grad_(input_grad)
    weight = conv.weight.detach().clone().to(memory_format=layout).requires_grad_(True)
    bias = conv.bias.detach().clone().requires_grad_(True) if conv.bias is not None else None

    def call() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = F.conv2d(x, weight, bias, conv.stride, conv.padding)
        out.backward(torch.ones_like(out))

    kernel = "x".join(map(str, conv.kernel_size))
    name = f"conv {kernel} {conv.in_channels}->{conv.out_channels} on {shape[2]}x{shape[3]}"
    return Rate(name + ("" if input_grad else " (no dx)"), counted_flops(call), mean_ms(call, calls, 2))


def step_phases(learner, steps: int) -> dict[str, float]:
    """ms per step in each phase of ``SingleModel.step``: the same calls, timed one by one."""
    train_step, stream = learner.train_step, learner.stream
    totals: dict[str, float] = defaultdict(float)
    for i in range(steps + 2):
        t0 = time.perf_counter()
        x, y = stream.next_batch()
        t1 = time.perf_counter()
        loss = train_step.loss(x, y)
        t2 = time.perf_counter()
        train_step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        train_step.optimizer.step()
        t4 = time.perf_counter()
        if i >= 2:  # two warm-up steps
            for name, value in zip(
                ("distortions", "forward", "backward", "optimiser"),
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
                strict=True,
            ):
                totals[name] += 1e3 * value / steps
    return dict(totals)


def operator_group(name: str, shapes: list) -> str:
    """The profile's group of one operator, from its name and (for convolutions) its weight's shape."""
    if "convolution" in name or "conv2d" in name:
        weights = [s for s in shapes if isinstance(s, list) and len(s) == 4]
        first = any(s[1] == 1 and s[2:] == [9, 9] for s in weights)
        return "conv 9x9 on one channel" if first else "other convolutions"
    if "pool" in name:
        return "pooling"
    if "grid_sampler" in name or "affine_grid" in name:
        return "sampler"
    if name in ("aten::addmm", "aten::mm", "aten::linear", "aten::bmm", "aten::matmul"):
        return "linear / matrix products"
    if "_foreach" in name or "sgd" in name.lower():
        return "optimiser"
    return "element-wise and other"


def operator_profile(learner, steps: int) -> dict[str, float]:
    """ms per step of each operator group (self time of the leaf operators)."""
    for _ in range(2):
        learner.step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            learner.step()
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        if event.self_cpu_time_total <= 0:
            continue
        groups[operator_group(event.key, list(event.input_shapes or []))] += (
            event.self_cpu_time_total / 1e3 / steps
        )
    return dict(groups)


VERSUS = ("plain-first-conv", "onednn-weight-grad", "row-major", "float32")


def plain_first_convs(model: nn.Module) -> nn.Module:
    """``model`` with every one-channel ``CpuConv2d`` replaced, in place, by ``nn.Conv2d`` on the same
    parameters (the engine before the matrix-product input gradient)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, CpuConv2d) and child.in_channels == 1:
                plain = nn.Conv2d(1, child.out_channels, child.kernel_size, padding=child.padding)
                plain.weight, plain.bias = child.weight, child.bias
                setattr(module, name, plain)
    return model


def onednn_weight_grads(model: nn.Module) -> nn.Module:
    """``model`` with oneDNN's weight gradient in every ``CpuConv2d`` (the engine before the one-channel
    im2col and the small-output forward-convolution weight gradients)."""
    for module in model.modules():
        if isinstance(module, CpuConv2d):
            module.fast_weight_grad = False
    return model


def parse_versus(text: str | None) -> list[str]:
    changes = [] if not text else text.split(",")
    unknown = [c for c in changes if c not in VERSUS]
    if unknown:
        raise SystemExit(f"--versus {text!r}: unknown {', '.join(unknown)}; known: {', '.join(VERSUS)}")
    return changes


def baseline_learner(digits, cell: tuple[str, str], args, device):
    """The cell's learner with the changes of ``--versus`` undone."""
    changes = parse_versus(args.versus)
    speed = speed_settings(args)
    if "row-major" in changes:
        speed = replace(speed, channels_last=False)
    if "float32" in changes:
        speed = replace(speed, autocast="none")
    learner = make_learner(digits, *cell, args.batch_size, 1, device, speed)
    if "plain-first-conv" in changes:
        plain_first_convs(learner.model)
    if "onednn-weight-grad" in changes:
        onednn_weight_grads(learner.model)
    return learner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cells", default=DEFAULT_CELLS, help="'all' or data/model list, e.g. r/cnn,rts/st_cnn:tps"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per cell (mean)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per peak operator (mean)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="also print where each step's time goes")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--autocast", default="none", choices=["none", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    parser.add_argument(
        "--versus",
        default=None,
        help="also time each cell with these changes undone (comma list), in this process, and print the "
        "speed-up: plain-first-conv (nn.Conv2d's input gradient for the one-channel first layer), "
        "onednn-weight-grad (oneDNN's weight gradient in every convolution), "
        "row-major (without --channels-last), float32 (without --autocast bf16: the step's precision against "
        "float32, on this CPU)",
    )
    parser.add_argument(
        "--project",
        type=int,
        default=None,
        metavar="ITERATIONS",
        help="also print the hours that --seeds seeds of every cell given take at ITERATIONS of this batch",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell for --project")
    parser.add_argument(
        "--no-mkldnn",
        action="store_true",
        help="oneDNN (mkldnn) off: convolutions through PyTorch's own im2col + BLAS path instead",
    )
    parser.add_argument("--synthetic", action="store_true", help="synthetic digits (no MNIST needed)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the report to a file in this folder"
    )
    args = parser.parse_args(argv)
    parse_versus(args.versus)  # a typo stops here, not after the peak measurements
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    device = torch.device("cpu")
    cells = parse_cells(args.cells)
    digits = synthetic_mnist(seed=0) if args.synthetic else load_mnist(default_data_dir())
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(
        report_header("bench_peak", args.batch_size, describe(args))
        + (" | oneDNN off" if args.no_mkldnn else "")
    )
    learners = {
        cell: make_learner(digits, *cell, args.batch_size, 1, device, speed_settings(args)) for cell in cells
    }

    # 1. Peak: the matmul and every convolution shape of the cells, alone, in each precision.
    operators = [("matmul", args.matmul_size)]
    seen: set[tuple] = set()
    for learner in learners.values():
        x, _ = learner.stream.next_batch()
        for shape, conv, input_grad in conv_shapes(learner.model, x):
            key = (shape, tuple(conv.weight.shape), conv.padding, input_grad)
            if key not in seen:
                seen.add(key)
                operators.append(("conv", (shape, conv, input_grad)))
    rates: list[dict[str, Rate]] = []
    for kind, what in operators:
        rates.append(
            {
                precision: matmul_rate(what, args.calls, precision)
                if kind == "matmul"
                else conv_rate(*what, args.calls, precision, args.channels_last)
                for precision in PRECISIONS
            }
        )
    peak = {p: max((r[p] for r in rates), key=lambda r: r.gflops) for p in PRECISIONS}
    layout = "channels-last" if args.channels_last else "row-major"
    say(f"\n## Peak: each operator alone, forward and backward (convolutions), {layout}")
    say(
        f"{'operator':48s} {'GFLOP':>8s} {'f32 ms':>8s} {'GFLOP/s':>8s} {'bf16 ms':>8s} {'GFLOP/s':>8s} "
        f"{'bf16/f32':>8s}"
    )
    for rate in rates:
        f32, bf16 = rate["float32"], rate["bf16"]
        say(
            f"{f32.name:48s} {f32.flops / 1e9:8.2f} {f32.ms:8.2f} {f32.gflops:8.1f} {bf16.ms:8.2f} "
            f"{bf16.gflops:8.1f} {bf16.gflops / f32.gflops:7.2f}x"
        )
    for precision in PRECISIONS:
        say(f"peak {precision}: {peak[precision].gflops:.1f} GFLOP/s ({peak[precision].name})")
    own_peak = peak["bf16" if args.autocast == "bf16" else "float32"]

    # 2. Each cell's training step against that peak (and against a baseline engine, with --versus).
    say(
        "\n## Training steps (SingleModel.step: distortions, forward, backward, SGD); of peak: of the peak of "
        f"the step's own precision ({args.autocast if args.autocast == 'bf16' else 'float32'}); of bf16: of "
        "the bfloat16 peak"
    )
    versus = (
        f" {'baseline ms':>11s} {'GFLOP/s':>8s} {'of peak':>8s} {'speed-up':>8s}  (baseline: {args.versus})"
        if args.versus
        else ""
    )
    say(
        f"{'cell':22s} {'GFLOP/step':>10s} {'ms/step':>8s} {'img/s':>8s} {'GFLOP/s':>8s} {'of peak':>8s} "
        f"{'of bf16':>8s}{versus}"
    )
    step_ms: dict[tuple[str, str], float] = {}
    base_step_ms: dict[tuple[str, str], float] = {}
    for cell, learner in learners.items():
        flops = counted_flops(learner.step)
        ms = time_learner(learner, args, lambda: None, args.steps, args.warmup)
        extra = ""
        if args.versus:
            base = baseline_learner(digits, cell, args, device)
            base_ms = time_learner(base, args, lambda: None, args.steps, args.warmup)
            ms = (ms + time_learner(learner, args, lambda: None, args.steps, args.warmup)) / 2  # around it
            base_rate = Rate("baseline", flops, base_ms)
            extra = (
                f" {base_ms:11.1f} {base_rate.gflops:8.1f} {base_rate.gflops / own_peak.gflops:8.1%} "
                f"{base_ms / ms:7.2f}x"
            )
            base_step_ms[cell] = base_ms
        step_ms[cell] = ms
        rate = Rate("/".join(cell), flops, ms)
        say(
            f"{rate.name:22s} {flops / 1e9:10.2f} {ms:8.1f} {args.batch_size / (ms / 1e3):8,.0f} "
            f"{rate.gflops:8.1f} {rate.gflops / own_peak.gflops:8.1%} {rate.gflops / peak['bf16'].gflops:8.1%}"
            f"{extra}"
        )

    if args.project:
        hours = sum(step_ms.values()) / 1e3 * args.project * args.seeds / 3600
        say(
            f"projected: {len(step_ms)} cells x {args.seeds} seeds x {args.project:,} iterations of "
            f"{args.batch_size} = {hours:.1f} h on this CPU"
            + (
                f" (the baseline engine: {sum(base_step_ms.values()) / 1e3 * args.project * args.seeds / 3600:.1f} h)"
                if base_step_ms
                else ""
            )
        )

    # 3. Where the time goes.
    if args.profile:
        for cell, learner in learners.items():
            phases = step_phases(learner, args.steps)
            total = sum(phases.values())
            say(f"\n## {'/'.join(cell)}: {total:.1f} ms per step")
            say("phases: " + " | ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in phases.items()))
            groups = operator_profile(learner, max(2, args.steps // 2))
            profiled = sum(groups.values())
            for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
                say(f"  {name:32s} {ms:8.1f} ms  {ms / profiled:6.1%}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"bench_peak_cpu_{datetime.now(UTC):%Y-%m-%d_%H%M}_{git_commit()[:7]}.txt"
        path.write_text("\n".join(lines) + "\n")
        print(f"written to {path}")


if __name__ == "__main__":
    main()
