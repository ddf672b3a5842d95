"""SVHN training-step cost: is ST-CNN Multi "only 6% slower (forward and backward) than the CNN" (Sect. 4.2)?

In one process it builds the Table 2 models (``--models``; default all three: the CNN, ST-CNN Single and
ST-CNN Multi) at ``--width`` (1: the paper's layout) for each of the ``--size`` px inputs (54: the 64 px
set's random crops; 128: the 128 px set; several sizes are timed side by side in the one process). Each
trains on one fixed random batch (images in [0, 1], five random labels of 11 classes): a step is forward,
the sequence loss (summed cross-entropy over the five heads), backward and an SGD step (momentum 0.9,
weight decay 5e-4, localisation lr 0.1 x base, as the appendix), models in train mode (dropout on).
``--no-update`` leaves the SGD step out, timing forward and backward only (the paper's words): the update
of 33-37M parameters costs the same for every model and so pulls the ratio towards 1 at small batches.

After ``--warmup`` untimed steps each, it times ``--rounds`` rounds; in each round every model runs
``--steps-per-round`` steps, the models taking turns in an order that rotates every round, so a drift of
the machine's speed (other jobs, clocks, heat) falls on every model alike. It reports each model's median
ms/step over the rounds (and the fastest and slowest round), the ratio of medians against the CNN and the
median of the per-round ratios (each from steps timed side by side), and writes the text to ``--out``.

    python benchmarks/bench_svhn.py                                   # CPU, batch 32: several minutes
    python benchmarks/bench_svhn.py --device cuda --batch-size 128 --rounds 20 --steps-per-round 10
    python benchmarks/bench_svhn.py --rounds 2 --steps-per-round 1 --warmup 1 --batch-size 4   # smoke check
    python benchmarks/bench_svhn.py --width 0.25 --size 54 128 --models cnn st_cnn_multi   # the quick profile

Run it on a quiet machine: the ratio is what matters, and it is only as good as the machine is steady.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stn_repro.models.svhn import SVHN_MODEL_KINDS, build_svhn_model
from stn_repro.training.learners import make_optimizer
from stn_repro.training.records import git_commit
from stn_repro.training.settings import TrainSettings

PAPER_MULTI_OVER_CNN = 1.06  # "only 6% slower (forward and backward) than the CNN"


def sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over positions of each head's cross-entropy, mean over the batch (the suite's sequence objective)."""
    per_position = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return per_position.view_as(labels).sum(1).mean()


def make_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, update: bool = True
) -> Callable[[], torch.Tensor]:
    """One training step of ``model`` on the fixed batch (without the SGD step unless ``update``); returns
    the loss (not synchronised)."""
    settings = TrainSettings(lr=0.01, momentum=0.9, weight_decay=5e-4, localisation_lr_multiplier=0.1)
    optimizer = make_optimizer(model, settings)
    for group in optimizer.param_groups:  # the loop sets each group's lr from lr_scale; do the same once
        group["lr"] = settings.lr * group["lr_scale"]

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = sequence_loss(model(images), labels)
        loss.backward()
        if update:
            optimizer.step()
        return loss.detach()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--size", type=int, nargs="+", default=[54], choices=[54, 128], help="input side(s) in px"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(SVHN_MODEL_KINDS),
        choices=SVHN_MODEL_KINDS,
        help="which models (the CNN is always timed: the ratios are against it)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (the median is over these)")
    parser.add_argument("--steps-per-round", type=int, default=3, help="steps of each model per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (1.0: the paper's)")
    parser.add_argument(
        "--no-update", action="store_true", help="time forward and backward only, without the SGD step"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.rounds, args.steps_per_round) < 1 or args.warmup < 0:
        parser.error("--batch-size, --rounds and --steps-per-round must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    sizes = list(dict.fromkeys(args.size))
    models = ["cnn", *(kind for kind in dict.fromkeys(args.models) if kind != "cnn")]
    say(
        f"stn-repro {git_commit()} | {datetime.now(UTC).isoformat(timespec='seconds')} | "
        f"device {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"batch {args.batch_size} x 3x{'/'.join(map(str, sizes))} px | width {args.width:g} | "
        f"{args.rounds} rounds x {args.steps_per_round} steps after {args.warmup} warm-up steps"
    )
    steps: dict[str, Callable[[], torch.Tensor]] = {}  # "<kind> <size>px" -> its step
    for size in sizes:
        in_shape = (3, size, size)
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(args.batch_size, *in_shape, generator=generator).to(device)
        labels = torch.randint(0, 11, (args.batch_size, 5), generator=generator).to(device)
        for kind in models:
            torch.manual_seed(0)
            model, info = build_svhn_model(kind, in_shape, width=args.width)
            model.to(device).train()
            steps[f"{kind} {size}px"] = make_step(model, images, labels, update=not args.no_update)
            say(
                f"  {kind + f' {size}px':<20} {info.param_count:>12,} parameters ({info.localisation_params:,} in "
                f"localisation nets), {info.fc_layers} fc layers"
            )

    last_loss: dict[str, torch.Tensor] = {}
    for name, step in steps.items():
        for _ in range(args.warmup):
            last_loss[name] = step()
    sync()

    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                last_loss[name] = steps[name]()
            sync()
            times[name].append(1e3 * (time.perf_counter() - start) / args.steps_per_round)

    what = "forward, loss, backward" + ("" if args.no_update else ", SGD step")
    say(
        f"\nms per training step ({what}), over {args.rounds} rounds; ratios against the CNN of the same size:"
    )
    say(f"  {'model':<20} {'median':>9} {'fastest':>9} {'slowest':>9} {'x CNN':>7} {'paired':>7}  final loss")
    for size in sizes:
        cnn = times[f"cnn {size}px"]
        for kind in models:
            name = f"{kind} {size}px"
            median = statistics.median(times[name])
            paired = statistics.median(t / c for t, c in zip(times[name], cnn, strict=True))
            say(
                f"  {name:<20} {median:9.1f} {min(times[name]):9.1f} {max(times[name]):9.1f} "
                f"{median / statistics.median(cnn):7.3f} {paired:7.3f}  {last_loss[name].item():.3f}"
            )
    for size in (size for size in sizes if "st_cnn_multi" in models):
        multi = statistics.median(times[f"st_cnn_multi {size}px"]) / statistics.median(times[f"cnn {size}px"])
        say(
            f"\nST-CNN Multi / CNN at {size}px: {multi:.3f} (paper: {PAPER_MULTI_OVER_CNN:.2f}, on its own GPU "
            "implementation); 'x CNN' is the ratio of medians, 'paired' the median of per-round ratios"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
