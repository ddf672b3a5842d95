"""Distorted-MNIST training throughput: the tutorial-style loop against the suite's engine, in one process.

For each model of ``--models`` on ``--data`` it times, one after the other:

(a) baseline: ``DistortedMNIST`` (distorts one image at a time on the CPU) + ``DataLoader(batch_size,
    shuffle=True, num_workers)`` + a plain loop (to the device, forward, cross-entropy, backward, SGD step);
(b) engine: ``DistortedStream`` on the device + ``TrainStep`` with the speed settings: the very
    ``SingleModel.step`` that ``stn_repro.training.loop.train`` runs, with its deferred loss check;
(c) stacked (``--stack S > 1``): ``S`` seeds trained as one model: ``StackedLearner.step``, the step of
    ``train_stacked``, ``S`` streams.

Every time is the mean over a window of ``--steps`` timed steps after ``--warmup`` untimed ones: the
DataLoader's workers deliver batches in bursts (one per worker at a time), so single-step times alternate
between waiting and not, and only a window's mean is the loop's throughput. Then it projects the wall time of the whole Table 1 protocol (32 cells + 4 TC
cells, 3 seeds, 150k iterations of 256) for (a), (b) and (c) from their step times measured in every cell
(or in the cells of ``--project-cells``, scaled to 36 cells).

    python benchmarks/bench_mnist.py                          # CPU: R, FCN and ST-CNN affine; a few minutes
    python benchmarks/bench_mnist.py --device cuda --steps 50 --warmup 10 --stack 3 --autocast bf16
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader

from stn_repro.data import DistortedMNIST, DistortedStream, MnistArrays, load_mnist, synthetic_mnist
from stn_repro.data.distortions import IMAGE_SIZE
from stn_repro.data.files import default_data_dir
from stn_repro.models.mnist import build_mnist_model
from stn_repro.training.learners import SingleModel, make_optimizer
from stn_repro.training.loop import LossWindow
from stn_repro.training.records import git_commit
from stn_repro.training.settings import COMPILE_MODES, SpeedSettings, TrainSettings
from stn_repro.training.stacked import StackedLearner

TABLE1_SETS = ("r", "rts", "p", "e")
TABLE1_MODELS = (
    "fcn",
    "cnn",
    "st_fcn:affine",
    "st_fcn:projective",
    "st_fcn:tps",
    "st_cnn:affine",
    "st_cnn:projective",
    "st_cnn:tps",
)
TC_MODELS = ("fcn", "cnn", "st_fcn:affine", "st_cnn:affine")
PAPER_ITERATIONS, PAPER_BATCH, PAPER_SEEDS = 150_000, 256, 3
META = torch.device("meta")  # operators dispatch as on any device, nothing computes


def table1_cells() -> list[tuple[str, str]]:
    """Every ``(data, model)`` cell of the protocol: Table 1's 32 and the 4 TC cells."""
    return [(d, m) for d in TABLE1_SETS for m in TABLE1_MODELS] + [("tc", m) for m in TC_MODELS]


def parse_cells(text: str) -> list[tuple[str, str]]:
    """``'all'`` or a comma list of ``data/model`` protocol cells, e.g. ``r/cnn,rts/st_cnn:tps``."""
    if text == "all":
        return table1_cells()
    cells = [tuple(c.split("/", 1)) for c in text.split(",")]
    unknown = [c for c in cells if c not in table1_cells()]
    if unknown:
        known = ", ".join(f"{d}/{m}" for d, m in table1_cells())
        raise ValueError(f"unknown cell(s) {', '.join('/'.join(c) for c in unknown)}; the cells are: {known}")
    return cells


@dataclass
class Timing:
    name: str
    ms_per_step: float
    images_per_step: int

    @property
    def images_per_s(self) -> float:
        return self.images_per_step / (self.ms_per_step / 1e3)


def build(data: str, model: str, seed: int, device: torch.device) -> torch.nn.Module:
    """The cell's model as ``run_mnist_seed`` builds it (the default 400k budget, pooled for RTS and TC)."""
    kind, _, transform = model.partition(":")
    torch.manual_seed(seed)
    size = IMAGE_SIZE[data]
    net, _ = build_mnist_model(
        kind, (1, size, size), transform=transform or None, pool_after_transformer=data in ("rts", "tc")
    )
    return net.to(device)


def timed(step: Callable[[], None], steps: int, warmup: int, sync: Callable[[], None]) -> float:
    """Mean milliseconds per call of ``step`` over ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return 1e3 * (time.perf_counter() - start) / steps


def baseline(
    digits: MnistArrays, data: str, model: str, args, device, sync, steps=None, warmup=None
) -> Timing:
    net = build(data, model, 0, device)
    optimizer = make_optimizer(net, TrainSettings())
    dataset = DistortedMNIST(
        data, digits.train_images, digits.train_labels, seed=0, clutter_source=digits.train_images
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    batches = iter(loader)

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # The workers stop when `batches` goes with this frame.
    ms = timed(step, args.steps if steps is None else steps, args.warmup if warmup is None else warmup, sync)
    return Timing(
        f"(a) baseline: DistortedMNIST + DataLoader(num_workers={args.workers})", ms, args.batch_size
    )


def make_learner(
    digits: MnistArrays, data: str, model: str, batch_size: int, seeds: int, device, speed: SpeedSettings
):
    """The engine as training runs it: ``SingleModel`` (``seeds == 1``) or ``StackedLearner`` over models
    built for seeds ``0 .. seeds-1``, each with its own ``DistortedStream`` on ``device``."""
    streams = [
        DistortedStream(
            data, digits.train_images, digits.train_labels, batch_size, seed=seed, device=device,
            clutter_source=digits.train_images,
        )
        for seed in range(seeds)
    ]  # fmt: skip
    models = [build(data, model, seed, device) for seed in range(seeds)]
    if seeds == 1:
        return SingleModel(models[0], streams[0], TrainSettings(), speed, batch_size)
    return StackedLearner(models, streams, TrainSettings(), speed, batch_size)


def engine(digits: MnistArrays, data: str, model: str, args, device, sync, steps=None, warmup=None) -> Timing:
    learner = make_learner(digits, data, model, args.batch_size, 1, device, speed_settings(args))
    ms = time_learner(learner, args, sync, steps, warmup)
    return Timing(
        f"(b) engine: DistortedStream on {device.type} + TrainStep({describe(args)})",
        ms,
        args.batch_size,
    )


def stacked(
    digits: MnistArrays, data: str, model: str, args, device, sync, steps=None, warmup=None
) -> Timing:
    speed = SpeedSettings(autocast=args.autocast)  # the stacked engine takes autocast only
    learner = make_learner(digits, data, model, args.batch_size, args.stack, device, speed)
    ms = time_learner(learner, args, sync, steps, warmup)
    return Timing(
        f"(c) stacked: {args.stack} seeds in one vmap model, autocast={args.autocast}",
        ms,
        learner.images_per_step,
    )


@dataclass
class OpCount:
    device: int = 0  # operators computing on the training device: about one GPU kernel launch each
    views: int = 0  # operators returning a view of a device tensor: host work only, no launch
    host: int = 0  # operators on CPU tensors (the distortions' random parameters): host work only


class OpCounter(TorchDispatchMode):
    """Sorts the ATen operators dispatched while active (forward, backward, optimiser, data) by where they
    run. The training device is ``meta``: every operator dispatches as on a GPU, but nothing computes, so
    the count is the same on any machine."""

    def __init__(self):
        super().__init__()
        self.count = OpCount()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        on_device = any(t.device.type == "meta" for t in tensors) or (
            not tensors and torch.device(kwargs.get("device") or "cpu").type == "meta"
        )
        if not on_device:
            self.count.host += 1
        elif func.is_view:
            self.count.views += 1
        else:
            self.count.device += 1
            self.device_operator(func, args, kwargs, tensors, out)
        return out

    def device_operator(self, func, args, kwargs, inputs: list[torch.Tensor], out) -> None:
        """Called for every counted device operator, with its arguments, their tensors and its result."""


def learner_as_on_cuda(
    digits: MnistArrays, data: str, model: str, batch_size: int, seeds: int, device: torch.device = META
):
    """The learner of :func:`make_learner` dispatching the operators a CUDA run dispatches, after one step
    (which fills the caches: identity grids, TPS control points). On ``meta`` (the default) they are counted
    without computing. SGD takes its ``foreach`` implementation, its default on CUDA (elsewhere it
    defaults to one operator per parameter tensor)."""
    learner = make_learner(digits, data, model, batch_size, seeds, device, SpeedSettings())
    for group in learner.optimizer.param_groups:
        group["foreach"] = True
    learner.step()
    return learner


def operators(
    digits: MnistArrays, data: str, model: str, batch_size: int, seeds: int
) -> tuple[OpCount, OpCount]:
    """Operators of one training step of ``seeds`` stacked models (1: the engine's single model), and of one
    of its streams' batches, counted on the meta device (:func:`learner_as_on_cuda`)."""
    learner = learner_as_on_cuda(digits, data, model, batch_size, seeds)
    with OpCounter() as step:
        learner.step()
    stream = learner.stream if seeds == 1 else learner.streams[0]
    with OpCounter() as batch:
        stream.next_batch()
    return step.count, batch.count


def time_learner(learner, args, sync, steps, warmup) -> float:
    """ms per step of ``learner.step()`` as ``run_training`` runs it: each step's losses go to a device-side
    window that is read back (checked) once per 500 steps, the paper profile's logging interval."""
    window = LossWindow(500, learner.num_models, learner.device)
    settings, where = TrainSettings(), Path("unused")
    iteration = 0

    def step() -> None:
        nonlocal iteration
        window.add(iteration, learner.step())
        iteration += 1
        if window.count == len(window.values):
            window.check(settings, where)

    ms = timed(step, args.steps if steps is None else steps, args.warmup if warmup is None else warmup, sync)
    window.check(settings, where)  # a benchmark that diverged measured nothing worth printing
    return ms


def speed_settings(args) -> SpeedSettings:
    return SpeedSettings(
        channels_last=args.channels_last,
        autocast=args.autocast,
        compile=args.compile,
        compile_mode=args.compile_mode,
    )


def describe(args) -> str:
    compiled = f"compile={args.compile}" + (f" ({args.compile_mode})" if args.compile else "")
    return f"channels_last={args.channels_last}, autocast={args.autocast}, {compiled}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h ({seconds / 86400:,.2f} days)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="r", choices=[*TABLE1_SETS, "tc"], help="set of the head-to-head")
    parser.add_argument(
        "--models", default="fcn,st_cnn:affine", help="comma list of kind[:transform] (head-to-head)"
    )
    parser.add_argument("--batch-size", type=int, default=PAPER_BATCH)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement (mean)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (worker start, allocation)"
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--autocast", default="none", choices=["none", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the engine's model")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode (reduce-overhead: CUDA graphs on a GPU)",
    )
    parser.add_argument("--stack", type=int, default=3, help="seeds stacked in (c); 1 skips (c)")
    parser.add_argument(
        "--project-cells",
        default="all",
        help="'all' (the 36 cells), 'none', or a comma list of data/model, e.g. r/cnn,rts/st_cnn:tps",
    )
    parser.add_argument(
        "--project-steps",
        type=int,
        default=4,
        help="timed steps per projected cell (even: whole worker rounds)",
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="synthetic digits even where data/mnist exists"
    )
    parser.add_argument(
        "--no-count-ops",
        dest="count_ops",
        action="store_false",
        help="skip counting the operators of one step of (b) and (c) in the head-to-head",
    )
    args = parser.parse_args(argv)
    try:
        cells = [] if args.project_cells == "none" else parse_cells(args.project_cells)
    except ValueError as error:
        parser.error(f"--project-cells: {error}")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    real = (default_data_dir() / "mnist").is_dir() and not args.synthetic
    digits = load_mnist() if real else synthetic_mnist(num_train=4096, num_test=16)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"stn-repro {git_commit()} | {datetime.now(UTC).isoformat(timespec='seconds')} | "
        f"device {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"data {'MNIST' if real else 'synthetic'} ({len(digits.train_labels):,} digits) | batch {args.batch_size} | "
        f"mean of {args.steps} steps after {args.warmup}"
    )

    for model in args.models.split(","):
        print(f"\n== {args.data} / {model}")
        runs = [
            baseline(digits, args.data, model, args, device, sync),
            engine(digits, args.data, model, args, device, sync),
        ]
        if args.stack > 1:
            runs.append(stacked(digits, args.data, model, args, device, sync))
        for run in runs:
            print(f"  {run.name:<75} {run.ms_per_step:9.1f} ms/step {run.images_per_s:9,.0f} img/s")
        if args.count_ops:
            print(
                "  operators per step (on the meta device; a device operator is about one GPU kernel launch):"
            )
            one, batch = operators(digits, args.data, model, args.batch_size, 1)
            print(f"    (b) one model:       {one.device:5} device + {one.views:4} views | {one.host:4} host")
            if args.stack > 1:
                many, _ = operators(digits, args.data, model, args.batch_size, args.stack)
                print(
                    f"    (c) {args.stack} stacked seeds: {many.device:5} device + {many.views:4} views | {many.host:4} host"
                    f" | {many.device / args.stack:.0f} device per model ({many.device / args.stack / one.device:.0%} of one)"
                )
            print(
                f"    of which one DistortedStream batch: {batch.device} device + {batch.views} views | {batch.host} host"
            )
        ratio = f"  ratio b/a: {runs[1].images_per_s / runs[0].images_per_s:.2f}x"
        if args.stack > 1:
            ratio += f" | c/a: {runs[2].images_per_s / runs[0].images_per_s:.2f}x"
        print(ratio)

    if not cells:
        return
    print(
        f"\n== projection of the Table 1 protocol ({len(table1_cells())} cells x {PAPER_SEEDS} seeds x "
        f"{PAPER_ITERATIONS:,} iterations x {args.batch_size}) from {len(cells)} measured cell(s), "
        f"mean of {args.project_steps} steps after 1; ms per step of one seed (c: of {args.stack} seeds)"
    )
    # Seconds for the whole protocol: every cell's step time x iterations x seeds (stacked: seeds / S steps).
    totals = {"a": 0.0, "b": 0.0, "c": 0.0}
    for data, model in cells:
        timings = {
            "a": baseline(digits, data, model, args, device, sync, steps=args.project_steps, warmup=1),
            "b": engine(digits, data, model, args, device, sync, steps=args.project_steps, warmup=1),
        }
        if args.stack > 1:
            timings["c"] = stacked(
                digits, data, model, args, device, sync, steps=args.project_steps, warmup=1
            )
        runs_per_cell = {"a": PAPER_SEEDS, "b": PAPER_SEEDS, "c": PAPER_SEEDS / args.stack}
        for key, timing in timings.items():
            totals[key] += timing.ms_per_step / 1e3 * PAPER_ITERATIONS * runs_per_cell[key]
        line = f"  {data:>3}/{model:<18}" + "".join(
            f" | {k} {t.ms_per_step:8.1f}" for k, t in timings.items()
        )
        print(f"{line} | b/a {timings['a'].ms_per_step / timings['b'].ms_per_step:5.2f}x", flush=True)
    scale = len(table1_cells()) / len(cells)  # a subset stands for all 36 cells in proportion
    note = "" if scale == 1 else f" (scaled x{scale:.2f} from the measured subset)"
    print(f"  (a) baseline, one seed at a time:  {hours(totals['a'] * scale)}{note}")
    print(f"  (b) engine, one seed at a time:    {hours(totals['b'] * scale)}{note}")
    if args.stack > 1:
        print(f"  (c) engine, {args.stack} seeds stacked:      {hours(totals['c'] * scale)}{note}")
    print(
        f"  b/a: {totals['a'] / totals['b']:.2f}x"
        + (f" | c/a: {totals['a'] / totals['c']:.2f}x" if args.stack > 1 else "")
    )


if __name__ == "__main__":
    main()
