"""Bounds on the GPU time of the Table 1 protocol, from counts and timings taken on any machine (no GPU needed).

Where no GPU can be timed, this is the measurement that can still be made. One training step of each
protocol cell (the engine's step: distortions, forward, loss, backward, SGD) runs on PyTorch's ``meta``
device, where every ATen operator dispatches as it would on a GPU (the same operators, shapes and dtypes)
but nothing is computed. For every operator that launches a kernel it records the floating-point work of
convolutions and matrix products (``torch.utils.flop_counter``'s formulas) and the bytes the operator reads
and writes. Two costs per step follow:

- **GPU floor**: every kernel takes at least ``max(kernel_us, flops / peak, bytes / bandwidth)`` on the
  named GPU, and a step takes at least their sum (the kernels of one stream run one after another, and
  processes time-share a GPU without MPS). Convolutions count at the TF32 peak (cuDNN's float32 default),
  matrix products at the FP32 peak (PyTorch's float32 matmul default). A lower bound: real kernels of these
  sizes reach a fraction of the peak. Only a step whose host work is hidden (whole-step CUDA graphs) can
  come near it.
- **host time**: the operators the step dispatches (device, views and the distortions' host-side random
  parameters) times this machine's measured cost of one operator: the wall time of the R FCN and ST-FCN
  steps at batch 1 on one CPU thread, whose arithmetic is negligible, over their operator counts (measured
  separately for stacked steps, whose vmapped operators cost more). An eager GPU step pays this host work,
  plus the CUDA driver's launch of each kernel (not counted here).

An eager step takes at least ``max(host time, GPU floor)``; jobs run at once in J processes share the host
time out over J cores but not the GPU's. These are estimates from measured parts, not measurements on a
GPU: a GPU machine's CPU is not this one, and ``make bench BENCH_ARGS="--device cuda"`` there measures the
real thing.

    python -m benchmarks.gpu_projection                          # all 36 cells, H100 SXM constants
    python -m benchmarks.gpu_projection --gpu h200 --jobs 4,32 --cells r/fcn,rts/st_cnn:affine
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from benchmarks.bench_mnist import (
    PAPER_BATCH,
    PAPER_ITERATIONS,
    PAPER_SEEDS,
    OpCounter,
    hours,
    learner_as_on_cuda,
    operators,
    parse_cells,
    table1_cells,
)
from stn_repro.data import load_mnist, synthetic_mnist
from stn_repro.data.files import default_data_dir
from stn_repro.training.records import git_commit


@dataclass(frozen=True)
class GpuSpec:
    """Dense peak rates from the vendor's data sheet, and the shortest time a kernel takes."""

    name: str
    fp32_tflops: float  # CUDA cores: float32 matrix products at PyTorch's default precision
    tf32_tflops: float  # tensor cores, dense: float32 convolutions (cuDNN allows TF32 by default)
    bandwidth_tbs: float  # HBM
    kernel_us: float  # a kernel that does next to nothing still occupies the GPU this long


# NVIDIA's H100 and H200 data sheets (dense rates: the sheets' tensor-core figures are with sparsity, 2x).
# kernel_us: an elementwise add of 1,024 floats measures 1.1-1.3 us on a GPU (pytorch/pytorch#161104).
GPUS = {
    "h100": GpuSpec("NVIDIA H100 SXM", fp32_tflops=67, tf32_tflops=494.5, bandwidth_tbs=3.35, kernel_us=1.0),
    "h100-pcie": GpuSpec(
        "NVIDIA H100 PCIe", fp32_tflops=51, tf32_tflops=378, bandwidth_tbs=2.0, kernel_us=1.0
    ),
    "h200": GpuSpec("NVIDIA H200 SXM", fp32_tflops=67, tf32_tflops=494.5, bandwidth_tbs=4.8, kernel_us=1.0),
}

# Operators that only allocate or relabel memory: no kernel runs.
_NO_KERNEL = {
    torch.ops.aten.empty,
    torch.ops.aten.empty_strided,
    torch.ops.aten.empty_like,
    torch.ops.aten.new_empty_strided,
    torch.ops.aten._unsafe_view,
}
_CONVOLUTIONS = {
    torch.ops.aten.convolution,
    torch.ops.aten._convolution,
    torch.ops.aten.convolution_backward,
    torch.ops.aten.cudnn_convolution,
}
# Operators that read only the rows they select (e.g. a batch out of the 60,000 training digits).
_GATHERS = {torch.ops.aten.index, torch.ops.aten.index_select, torch.ops.aten.gather}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def bytes_moved(func, inputs: list[torch.Tensor], out) -> int:
    """Bytes a kernel reads and writes at least: its outputs, and the inputs it reads (a gather reads the
    selected rows and the indices; ``copy_`` does not read its destination)."""
    outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    written = _nbytes(outputs)
    packet = func._overloadpacket
    if packet in _GATHERS:
        return 2 * written + _nbytes(t for t in inputs[1:] if not t.is_floating_point())
    if packet is torch.ops.aten.copy_:
        return written + _nbytes(inputs[1:2])
    return written + _nbytes(inputs)


class _KernelCost(OpCounter):
    """The bench's operator count, plus each kernel's flops, bytes and roofline time on ``gpu``, filed under
    the term that bounds it: ``launch`` (``kernel_us``), ``memory`` or ``arithmetic``."""

    def __init__(self, gpu: GpuSpec):
        super().__init__()
        self.gpu = gpu
        self.kernels, self.flops, self.bytes = 0, 0.0, 0.0
        self.bound_s = dict.fromkeys(("launch", "memory", "arithmetic"), 0.0)

    def device_operator(self, func, args, kwargs, inputs, out) -> None:
        packet = func._overloadpacket
        if packet in _NO_KERNEL:
            return
        moved = bytes_moved(func, inputs, out)
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        peak = self.gpu.tf32_tflops if packet in _CONVOLUTIONS else self.gpu.fp32_tflops
        terms = {
            "launch": self.gpu.kernel_us * 1e-6,
            "memory": moved / (self.gpu.bandwidth_tbs * 1e12),
            "arithmetic": flops / (peak * 1e12),
        }
        bound = max(terms, key=terms.get)
        self.bound_s[bound] += terms[bound]
        self.kernels += 1
        self.flops += flops
        self.bytes += moved


@dataclass
class CellCost:
    operators: int  # dispatched per step: device, views and host
    kernels: int
    flops: float  # convolutions and matrix products
    bytes: float
    bound_s: dict[str, float]  # the GPU floor's seconds by bounding term
    host_s: float  # operators x the measured host cost of one

    @property
    def gpu_floor_s(self) -> float:
        return sum(self.bound_s.values())

    @property
    def eager_s(self) -> float:
        return max(self.host_s, self.gpu_floor_s)


def cell_cost(
    digits, data: str, model: str, batch_size: int, seeds: int, gpu: GpuSpec, host_s_per_operator: float
) -> CellCost:
    """The costs of one training step of ``seeds`` models (stacked when > 1) of one cell."""
    learner = learner_as_on_cuda(digits, data, model, batch_size, seeds)
    with _KernelCost(gpu) as counter:
        learner.step()
    operators = counter.count.device + counter.count.views + counter.count.host
    return CellCost(
        operators=operators,
        kernels=counter.kernels,
        flops=counter.flops,
        bytes=counter.bytes,
        bound_s=counter.bound_s,
        host_s=operators * host_s_per_operator,
    )


# Cells whose step at batch 1 is nearly all host work (no convolutions), spanning the operator mix: plain
# layers and optimiser, and a localisation net, grid and sampler of each transform family.
CALIBRATION_CELLS = (("r", "fcn"), ("r", "st_fcn:affine"), ("r", "st_fcn:projective"), ("r", "st_fcn:tps"))


def host_seconds_per_operator(digits, stacks: Sequence[int], steps: int, rounds: int = 5) -> dict[int, float]:
    """This machine's host time per dispatched operator, for each number of stacked seeds in ``stacks``:
    the steps of ``CALIBRATION_CELLS`` at batch 1 on one CPU thread, each learner's fastest step of
    ``rounds`` rounds of ``steps`` over all of them (a shared machine's interruptions come in spells; the
    fastest step is one they missed), over their operator counts (counted after all the timing, so that
    nothing of the counting lingers in the timed steps). A digit through these models is under 1M
    multiply-adds, so the time is the host's: Python, autograd, the dispatcher, the optimiser, the
    distortions' parameters. One thread, as a GPU job's host has."""
    runs = [(seeds, data, model) for seeds in stacks for data, model in CALIBRATION_CELLS]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = torch.device("cpu")
        learners = [learner_as_on_cuda(digits, data, model, 1, seeds, cpu) for seeds, data, model in runs]
        fastest = [math.inf] * len(runs)
        for _ in range(rounds):
            for index, learner in enumerate(learners):
                for _ in range(steps):
                    start = time.perf_counter()
                    learner.step()
                    fastest[index] = min(fastest[index], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    seconds, counted = dict.fromkeys(stacks, 0.0), dict.fromkeys(stacks, 0)
    for (seeds, data, model), time_s in zip(runs, fastest, strict=True):
        count, _ = operators(digits, data, model, 1, seeds)
        seconds[seeds] += time_s
        counted[seeds] += count.device + count.views + count.host
    return {seeds: seconds[seeds] / counted[seeds] for seeds in stacks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="data-sheet constants to use")
    parser.add_argument("--cells", default="all", help="'all' (36) or a comma list of data/model")
    parser.add_argument("--batch-size", type=int, default=PAPER_BATCH)
    parser.add_argument("--stack", type=int, default=PAPER_SEEDS, help="seeds stacked in one job")
    parser.add_argument(
        "--jobs", default="8,16", help="comma list: jobs at once (processes, one host core each)"
    )
    parser.add_argument(
        "--steps", type=int, default=40, help="host calibration: timed steps per learner and round"
    )
    parser.add_argument("--synthetic", action="store_true", help="synthetic digits even where MNIST exists")
    args = parser.parse_args(argv)
    try:
        jobs = [int(j) for j in args.jobs.split(",")]
    except ValueError:
        parser.error(f"--jobs: {args.jobs!r} is not a comma list of integers, e.g. 8,16")
    if args.stack < 1 or min(jobs) < 1:
        parser.error("--stack and --jobs must be at least 1")
    try:
        cells = parse_cells(args.cells)
    except ValueError as error:
        parser.error(f"--cells: {error}")

    gpu = GPUS[args.gpu]
    real = (default_data_dir() / "mnist").is_dir() and not args.synthetic
    digits = load_mnist() if real else synthetic_mnist(num_train=4096, num_test=16)
    per_op = host_seconds_per_operator(digits, sorted({1, args.stack}), args.steps)
    print(
        f"stn-repro {git_commit()} | {datetime.now(UTC).isoformat(timespec='seconds')} | torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads ({platform.processor() or 'cpu'}) | batch {args.batch_size}\n"
        f"GPU constants, {gpu.name}: FP32 {gpu.fp32_tflops} / TF32 {gpu.tf32_tflops} TFLOPS dense, "
        f"{gpu.bandwidth_tbs} TB/s, {gpu.kernel_us} us per kernel\n"
        f"host cost per operator, measured here: {per_op[1] * 1e6:.1f} us (one model), "
        f"{per_op[args.stack] * 1e6:.1f} us ({args.stack} stacked)\n"
        "Estimates from counts (meta device), data-sheet peaks and this machine's host time; not measured on a GPU."
    )
    print(
        f"\n  {'one step of':<22} {'ops':>5} {'kernels':>7} {'GFLOP':>7} {'MB':>7} {'GPU ms':>7} {'host ms':>8}"
        f" | {args.stack} stacked: {'kernels':>7} {'GPU ms':>7} {'host ms':>8}"
    )
    single, stacked = [], []
    for data, model in cells:
        one = cell_cost(digits, data, model, args.batch_size, 1, gpu, per_op[1])
        many = (
            cell_cost(digits, data, model, args.batch_size, args.stack, gpu, per_op[args.stack])
            if args.stack > 1
            else one
        )
        single.append(one)
        stacked.append(many)
        print(
            f"  {data + '/' + model:<22} {one.operators:5} {one.kernels:7} {one.flops / 1e9:7.2f} "
            f"{one.bytes / 1e6:7.1f} {one.gpu_floor_s * 1e3:7.3f} {one.host_s * 1e3:8.2f}"
            f" | {'':>10}{many.kernels:7} {many.gpu_floor_s * 1e3:7.3f} {many.host_s * 1e3:8.2f}",
            flush=True,
        )

    # Whole-protocol seconds: a cell's step time x iterations x runs (stacked: one run carries `stack` seeds).
    scale = len(table1_cells()) / len(cells)  # a subset stands for all 36 cells in proportion
    iterations = PAPER_ITERATIONS * scale
    seed_runs, stacked_runs = PAPER_SEEDS, PAPER_SEEDS / args.stack

    def total(costs: list[CellCost], seconds: Callable[[CellCost], float], runs: float) -> float:
        return sum(seconds(c) for c in costs) * iterations * runs

    def at_once(costs: list[CellCost], runs: float, processes: int) -> float:
        # Processes: their host work runs on as many cores side by side, their kernels share one GPU.
        return max(
            total(costs, lambda c: c.host_s, runs) / processes, total(costs, lambda c: c.gpu_floor_s, runs)
        )

    note = "" if scale == 1 else f" (scaled x{scale:.2f} from {len(cells)} cells)"
    print(
        f"\n== the Table 1 protocol ({len(table1_cells())} cells x {PAPER_SEEDS} seeds x {PAPER_ITERATIONS:,} "
        f"iterations x {args.batch_size}) on one {gpu.name}{note}"
    )
    stack = f"{args.stack} seeds stacked"
    rows = [
        ("eager, one seed at a time", total(single, lambda c: c.eager_s, seed_runs)),
        *[(f"eager, one seed per job, {j} jobs at once", at_once(single, seed_runs, j)) for j in jobs],
        (f"eager, {stack}", total(stacked, lambda c: c.eager_s, stacked_runs)),
        *[(f"eager, {stack}, {j} jobs at once", at_once(stacked, stacked_runs, j)) for j in jobs],
        (
            "GPU floor alone (whole-step CUDA graphs), one seed",
            total(single, lambda c: c.gpu_floor_s, seed_runs),
        ),
        (
            f"GPU floor alone (whole-step CUDA graphs), {stack}",
            total(stacked, lambda c: c.gpu_floor_s, stacked_runs),
        ),
    ]
    for name, seconds in rows:
        print(f"  {name:<58} {hours(seconds)}")
    bounds = {term: total(single, lambda c, t=term: c.bound_s[t], seed_runs) for term in single[0].bound_s}
    print(
        "  the one-seed GPU floor is bound by "
        + ", ".join(f"{term} {seconds / 3600:.2f} h" for term, seconds in bounds.items())
    )
    print(
        f"  one seed at a time moves {total(single, lambda c: c.bytes, seed_runs) / 1e15:.1f} PB and computes "
        f"{total(single, lambda c: c.flops, seed_runs) / 1e18:.2f} EFLOP in "
        f"{total(single, lambda c: c.kernels, seed_runs) / 1e9:.1f} billion kernels"
    )


if __name__ == "__main__":
    main()
