"""Before a long reproduction starts: the runs it will train, and how long they take on this machine.

stn-plan mnist profile=fast data=r,rts,p,e model=fcn,cnn transformer=none seed=1,2,3
stn-plan mnist profile=paper data=r model=st_cnn transformer=affine seed=1 --and data=tc model=fcn seed=1

Each group of overrides is one sweep of the runner (``python -m experiments.<runner> -m <overrides>``); the plan
is every job of every sweep. For distorted MNIST and MNIST addition the time is estimated from a measured
step: each distinct model is built and trained for a few steps here, at the run's batch size, speed
settings and device, and the step time is multiplied by the run's iterations (evaluations add a few per
cent, not counted). Runs that have finished in the runs folder are not counted.

The paper's protocol on a CPU takes weeks: ``stn-plan`` then says how long, what ``fast`` and ``quick``
would take instead, and exits 3 unless ``--confirm`` (``make reproduce-mnist CONFIRM=1``) says to start it
anyway. ``paper`` stays the reproduction: nothing here changes what a runner trains.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stn_analysis.paths import CONFIGS, check_checkout, runs_dir
from stn_repro.training.learners import TrainStep, make_optimizer
from stn_repro.training.run_folder import read_finished_record
from stn_repro.training.runs import resolve_device
from stn_repro.training.settings import SpeedSettings, TrainSettings, resolve_autocast

TIMED_RUNNERS = ("mnist", "addition")
STEPS_TIMED = 3  # after one untimed warm-up step
PAPER_ON_CPU_LIMIT_H = 24.0  # longer than this, the paper's protocol on a CPU waits for --confirm
REFUSED = 3  # the exit status when it does


@dataclass(frozen=True)
class PlannedRun:
    cell: str
    seed: int
    profile: str
    iterations: int
    batch_size: int
    finished: bool
    model_key: tuple | None  # what the step time depends on (None: not timed for this runner)


def expand(sweeps: Sequence[Sequence[str]]) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper runs them (the cartesian product of each sweep)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    jobs = []
    for sweep in sweeps:
        for batch in BasicSweeper.split_arguments(parser.parse_overrides(list(sweep)), None):
            jobs += batch
    return jobs


def plan_runs(runner: str, jobs: list[list[str]]) -> list[tuple[PlannedRun, dict]]:
    """Each job composed as the runner would compose it: the run, and the model options timing needs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from stn_repro.models.mnist import width_range_budget

    check_checkout()
    # The width_ranges budget's resolver (the runner registers the same one).
    OmegaConf.register_new_resolver(
        "stn_width_range_budget",
        lambda size, pool: width_range_budget(int(size), bool(pool)).params,
        replace=True,
    )
    planned = []
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for overrides in jobs:
            cfg = compose(runner, overrides=overrides)
            trainer = cfg.trainer
            seeds = list(cfg.seeds) if cfg.get("seeds") else [cfg.seed]
            suffix = OmegaConf.select(cfg, "budget.folder_suffix", default="") or ""
            folder = runs_dir() / cfg.task_name / f"{trainer.profile}{suffix}" / cfg.cell
            options = timing_options(runner, cfg)
            for seed in seeds:
                finished = read_finished_record(folder / f"seed{seed}") is not None
                key = None if options is None else tuple(sorted((k, repr(v)) for k, v in options.items()))
                run = PlannedRun(
                    cfg.cell, seed, trainer.profile, trainer.iterations, trainer.batch_size, finished, key
                )
                planned.append((run, options))
    return planned


def timing_options(runner: str, cfg) -> dict | None:
    """What builds the run's model and steps it (``None`` for a runner whose steps are not timed here)."""
    from omegaconf import OmegaConf

    if runner not in TIMED_RUNNERS:
        return None
    model = {
        k: (list(v) if OmegaConf.is_list(v) else v)
        for k, v in cfg.model.items()
        if k not in ("name", "kind", "transform") and v is not None
    }
    transform = cfg.model.get("transform") if runner == "addition" else cfg.transformer.name
    return {
        "runner": runner,
        "kind": cfg.model.kind,
        "transform": None if transform in (None, "none") else transform,
        "image_size": cfg.data.get("image_size", 42),
        "pool_after_transformer": bool(cfg.data.get("pool_after_transformer", True)),
        "model": model,
        "batch_size": cfg.trainer.batch_size,
        "device": cfg.trainer.device,
        "channels_last": cfg.trainer.channels_last,
        "autocast": cfg.trainer.autocast,
    }


def step_seconds(options: dict) -> float:
    """Seconds per training step of the model ``options`` describe, measured here (random data)."""
    device = resolve_device(options["device"])
    if options["runner"] == "mnist":
        from stn_repro.models.mnist import build_mnist_model

        size = options["image_size"]
        shape, classes = (1, size, size), 10
        model, _ = build_mnist_model(
            options["kind"],
            shape,
            transform=options["transform"],
            pool_after_transformer=options["pool_after_transformer"],
            **options["model"],
        )
    else:
        from stn_repro.models.addition import ADDITION_INPUT_SHAPE, build_addition_model

        shape, classes = ADDITION_INPUT_SHAPE, 19
        model, _ = build_addition_model(
            options["kind"],
            shape,
            transform=options["transform"],
            pool_after_transformer=options["pool_after_transformer"],
            **options["model"],
        )
    model.to(device).train()
    channels_last = options["channels_last"] is True or (
        options["channels_last"] == "cpu" and device.type == "cpu"
    )
    speed = SpeedSettings(channels_last=channels_last, autocast=resolve_autocast(options["autocast"], device))
    step = TrainStep(model, make_optimizer(model, TrainSettings(lr=0.01)), speed)
    x = torch.rand(options["batch_size"], *shape, device=device)
    y = torch.randint(0, classes, (options["batch_size"],), device=device)
    step.update(step.loss(x, y))  # warm-up: allocations, kernel choice
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(STEPS_TIMED):
        step.update(step.loss(x, y))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / STEPS_TIMED


def hours_text(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return f"{seconds / 60:.0f} min"
    return f"{hours:,.1f} h" + (f" ({hours / 24:.1f} days)" if hours >= 48 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runner", choices=("mnist", "addition", "svhn", "cub", "coloc"))
    parser.add_argument("overrides", nargs="*", help="one sweep's overrides; --and starts the next sweep")
    parser.add_argument("--confirm", action="store_true", help="start even the paper's protocol on a CPU")
    parser.add_argument("--no-timing", action="store_true", help="list the runs, do not time their steps")
    args, rest = parser.parse_known_args(argv)
    sweeps, current = [], []
    for token in [*args.overrides, *rest]:
        if token == "--and":
            sweeps.append(current)
            current = []
        else:
            current.append(token)
    sweeps.append(current)
    try:
        planned = plan_runs(args.runner, expand(sweeps))
    except Exception as error:  # a bad override: Hydra's own message, in one line
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    todo = [(run, options) for run, options in planned if not run.finished]
    profiles = sorted({run.profile for run, _ in planned})
    cells = sorted({run.cell for run, _ in planned})
    seeds = sorted({run.seed for run, _ in planned})
    print(
        f"{args.runner}, profile {', '.join(profiles)}: {len(planned)} run(s) ({len(cells)} cell(s), seeds "
        f"{', '.join(map(str, seeds))}); {len(planned) - len(todo)} finished in {runs_dir() / args.runner}, "
        f"{len(todo)} to train"
    )
    if profiles == ["smoke"]:
        args.no_timing = True  # a few steps per run: nothing to wait for
    if not todo or args.no_timing or all(options is None for _, options in todo):
        if todo and not args.no_timing:
            print("  (no time estimate for this runner: its steps are not timed here)")
        return 0
    measured: dict[tuple, float] = {}
    started = time.perf_counter()
    for run, options in todo:
        if run.model_key not in measured:
            measured[run.model_key] = step_seconds(options)
    total = sum(measured[run.model_key] * run.iterations for run, _ in todo)
    device = "GPU" if torch.cuda.is_available() and all(o["device"] != "cpu" for _, o in todo) else "CPU"
    where = (
        f"{device}, {torch.get_num_threads()} threads" if device == "CPU" else torch.cuda.get_device_name()
    )
    print(
        f"  estimated training time on this machine ({where}): {hours_text(total)}, from {STEPS_TIMED} measured "
        f"steps of each of its {len(measured)} models ({time.perf_counter() - started:.0f} s)"
    )
    longest = max(todo, key=lambda item: measured[item[0].model_key] * item[0].iterations)[0]
    print(
        f"  longest run: {longest.cell} seed {longest.seed}, {hours_text(measured[longest.model_key] * longest.iterations)}"
    )
    if "paper" in profiles and device == "CPU" and total / 3600 > PAPER_ON_CPU_LIMIT_H and not args.confirm:
        print(
            f"\nThis is the paper's protocol ({longest.iterations:,} iterations of {longest.batch_size} per run) "
            f"on a CPU: {hours_text(total)} here. The same cells on fewer images, labelled as such in every "
            "table: PROFILE=fast (5% of the paper's images, with an optimiser chosen for it) or PROFILE=quick "
            "(minutes per cell), e.g. `make reproduce-mnist PROFILE=fast`. To start the paper's protocol here "
            "anyway: `make reproduce-mnist CONFIRM=1` (runs resume where they stop; `make park` keeps "
            "unfinished ones between sessions).",
            file=sys.stderr,
        )
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
