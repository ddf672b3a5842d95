"""The single-seed job every experiment shares: train, save the weights, write and publish the record, draw
pictures; plus the devices and seeds every runner checks.

An experiment (distorted MNIST, SVHN, ...) adds only what is its own: it loads its data, builds its model
and says what its record holds, as a :class:`PreparedRun`; :func:`run_seed` does the rest the same way for
all of them. Nothing here knows Hydra: the entry points in ``experiments/`` translate configs into these
explicit arguments.
The run folder itself (ownership, what a finished one holds) is :mod:`stn_repro.training.run_folder`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from stn_repro.tracking import Tracker
from stn_repro.training.learners import BatchStream, Learner
from stn_repro.training.loop import TrainResult, run_training, train
from stn_repro.training.objectives import CLASSIFICATION, Objective
from stn_repro.training.records import (
    RECORD_NAME,
    as_written,
    collapsed,
    provenance,
    write_record,
)
from stn_repro.training.run_folder import RunLock, log_already_finished, read_finished_record
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.training.weights import WEIGHTS_NAME, save_weights
from stn_repro.viz import save_figure

SINGLE_ENGINE = {"name": "single"}


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA where available, else the CPU) or an explicit device that must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use trainer.device=auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available; use trainer.device=cpu or auto"
        )
    return device


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list, if it is at least one distinct positive integer; else a ``ValueError``."""
    seeds = list(seeds)
    valid = all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in seeds)
    if not seeds or not valid or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be one or more distinct positive integers, got {seeds!r}")
    return seeds


# --- run folders ---------------------------------------------------------------------------------------------


# --- the single-seed job ---------------------------------------------------------------------------------------


@dataclass
class PreparedRun:
    """One seed of one cell of an experiment, ready to train: what the experiment itself provides.

    ``record`` holds the experiment's own record fields (``paper_error``, model description, the identity
    of the test set, ...); :func:`run_seed` adds the generic ones. ``weights`` is what rebuilds the model
    (saved in ``model.pt`` beside the trained state). ``figure()`` draws what the transformer(s) do now
    (``None`` for a model without one).
    """

    cell: str
    seed: int
    model: nn.Module
    stream: BatchStream
    eval_sets: dict[str, tuple[Tensor, Tensor]]
    batch_size: int
    param_count: int
    description: str
    record: dict[str, Any]
    weights: dict[str, Any]
    objective: Objective = CLASSIFICATION
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    figure: Callable[[], Any] | None = None
    # A learner other than the classification one (``None``: :func:`~stn_repro.training.loop.train`'s
    # ``SingleModel`` over ``model`` and ``stream``): ``make_learner(settings)`` builds it for
    # :func:`~stn_repro.training.loop.run_training`, e.g. co-localisation's unsupervised hinge loss.
    make_learner: Callable[[TrainSettings], Learner] | None = None


def picture_saver(
    run: PreparedRun, run_dir: Path, tracker: Tracker, figure: Callable[[], Any] | None = None
) -> Callable[[int], None]:
    """A callback ``(iteration) -> None`` that saves ``figure()`` (default ``run.figure``) to
    ``run_dir/pictures/transform_<iteration>.png`` and hands it to ``tracker``."""
    figure = figure or run.figure

    def on_picture(iteration: int) -> None:
        fig = figure() if figure is not None else None
        if fig is None:
            return
        path = save_figure(fig, Path(run_dir) / "pictures" / f"transform_{iteration:07d}.png")
        tracker.log_image(
            "transformations", path, step=iteration, caption=f"{run.cell} at iteration {iteration}"
        )

    return on_picture


def run_record(
    run: PreparedRun,
    settings: TrainSettings,
    result: TrainResult,
    device: torch.device,
    *,
    profile: str,
    reduced_budget: bool,
    engine: dict[str, Any],
    config: dict[str, Any] | None,
) -> dict[str, Any]:
    """The record of one finished seed: the experiment's fields, the result, budget and provenance, in the
    form its ``record.json`` holds (``as_written``)."""
    record = {
        **run.record,
        "cell": run.cell,
        "seed": run.seed,
        "profile": profile,
        "reduced_budget": reduced_budget,
        "finished": True,
        "metric": run.objective.error_name,
        "test_error": result.errors["test"],
        "precision": run.speed.autocast,  # trainer.autocast as it ran (auto resolved): none = float32
        "val_error": result.errors.get("val"),
        "param_count": run.param_count,
        "iterations": result.iterations,
        "batch_size": run.batch_size,
        "images_seen": result.iterations * run.batch_size,
        "wall_time_s": round(result.wall_time_s, 1),
        "engine": engine,
        "weights": WEIGHTS_NAME,
        "history": result.history,
        # Per transformer, how much its predicted parameters vary over test images: 0 is a dead
        # localisation net (a fixed warp), which the tables mark.
        "localisation_spread": result.localisation_spread,
        "launches": result.launches,
        **provenance(device),
        "config": config,
    }
    return as_written(record)


def publish_record(
    record: dict[str, Any], record_path: Path, tracker: Tracker, log: Callable[[str], None]
) -> None:
    """Write ``record`` to ``record_path``, give its numbers to ``tracker`` (summary and result-vs-paper
    table) and log the result."""
    write_record(record_path, record)
    paper = record.get("paper_error")
    tracker.summary(
        {"test_error": record["test_error"], "paper_error": paper, "param_count": record["param_count"]}
    )
    columns = ["cell", "seed", "test_error", "paper_error", "param_count", "iterations", "profile"]
    tracker.log_table("result_vs_paper", columns, [[record.get(c) for c in columns]])
    paper_text = f" (paper {paper:.1f}%)" if paper is not None else ""
    log(
        f"{record['cell']} seed {record['seed']}: {record.get('metric', '% test error')} "
        f"{record['test_error']:.2f}%{paper_text} -> {record_path}"
    )
    if collapsed(record):
        log(
            f"WARNING {record['cell']} seed {record['seed']}: a localisation net predicts the same transform "
            f"for every test image (spread {record['localisation_spread']}): that transformer is a fixed warp "
            "(its hidden units are likely dead) and the tables mark this run. Try another seed, or a lower "
            "localisation learning rate (optim.localisation_lr_multiplier)."
        )


class SeedSpec(Protocol):
    """What :func:`run_seed` reads from an experiment's spec of one seed (a dataclass; every task's has these)."""

    device: str
    profile: str
    reduced_budget: bool


def run_seed(
    spec: SeedSpec,
    prepare: Callable[[torch.device], PreparedRun],
    settings: TrainSettings,
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
    device: str | torch.device | None = None,
    writer: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one seed of one cell in ``run_dir`` (resuming its checkpoint); return its record.

    ``spec`` is the experiment's description of the seed (a dataclass): its ``device`` (unless ``device`` is
    given), ``profile`` and ``reduced_budget`` go into the run and its record, which keeps ``config`` (by
    default the spec and the settings).

    A finished run (its ``record.json`` says so) is not run again: the record is returned as it is. The
    folder is owned by this process while it trains (:class:`RunLock`; a second launch raises
    :class:`RunLocked`). ``prepare(device)`` loads the data and builds the model. ``make_tracker()`` makes
    the run's tracker (e.g. its W&B run), which this function finishes; it is called only once the data
    have loaded and the model is built, so a finished run or a missing data file leaves no empty W&B run.
    A run that stops early (``settings.stop_after``, SIGINT, SIGTERM) returns ``{"finished": False,
    "iterations", "stopped_by"}`` after its checkpoint is saved.

    ``writer=False``: a process of a data-parallel run other than rank 0 (the run needs ``run.make_learner``,
    whose learner does the communication). It trains in step with the others and resumes from the
    checkpoint like them, but takes no lock, makes no tracker, draws no pictures and writes nothing
    (checkpoint, weights, record): rank 0 does. It returns the record it would have written.
    """
    run_dir = Path(run_dir)
    device = spec.device if device is None else device
    profile, reduced_budget = spec.profile, spec.reduced_budget
    config = config or {"spec": asdict(spec), "settings": asdict(settings)}
    finished = read_finished_record(run_dir)
    if finished is not None:
        log_already_finished(finished, run_dir, log)
        return finished
    with RunLock(run_dir, log=log) if writer else contextlib.nullcontext():
        finished = read_finished_record(run_dir)  # finished by the previous owner while we waited to look
        if finished is not None:
            log_already_finished(finished, run_dir, log)
            return finished
        torch_device = resolve_device(device)
        run = prepare(torch_device)
        log(run.description)
        if not writer and run.make_learner is None:
            raise ValueError("run_seed(writer=False) needs a PreparedRun with make_learner (data parallel)")
        tracker = make_tracker() if make_tracker and writer else Tracker()
        try:
            if run.make_learner is not None:  # a learner of its own (e.g. co-localisation)
                result = _train_learner(run, settings, run_dir, tracker, log, write=writer)
            else:
                result = train(
                    run.model,
                    run.stream,
                    run.eval_sets,
                    settings,
                    run_dir,
                    batch_size=run.batch_size,
                    tracker=tracker,
                    on_picture=picture_saver(run, run_dir, tracker),
                    log=log,
                    speed=run.speed,
                    objective=run.objective,
                )
            if not result.finished:
                return {"finished": False, "iterations": result.iterations, "stopped_by": result.stopped_by}
            if writer:
                save_weights(run_dir / WEIGHTS_NAME, run.model, run.cell, run.seed, run.weights)
            record = run_record(
                run,
                settings,
                result,
                torch_device,
                profile=profile,
                reduced_budget=reduced_budget,
                engine=SINGLE_ENGINE,
                config=config,
            )
            if writer:
                publish_record(record, run_dir / RECORD_NAME, tracker, log)
            return record
        finally:
            tracker.finish()


def _train_learner(
    run: PreparedRun,
    settings: TrainSettings,
    run_dir: Path,
    tracker: Tracker,
    log: Callable[[str], None],
    write: bool = True,
) -> TrainResult:
    """Train ``run.make_learner(settings)`` with :func:`~stn_repro.training.loop.run_training` (one model);
    ``write=False``: no checkpoint files, no pictures (see :func:`run_seed`)."""
    (result,) = run_training(
        run.make_learner(settings),
        run.eval_sets,
        settings,
        run_dir,
        trackers=[tracker],
        on_picture=picture_saver(run, run_dir, tracker) if write else None,
        log=log,
        extra_state={"speed": asdict(run.speed)},
        write=write,
    )
    return result
