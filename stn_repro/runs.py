"""What every experiment's runner shares: devices and seeds, run folders (one owner at a time, finished
records), and the single-seed job (train, save the weights, write and publish the record, draw pictures).

An experiment (distorted MNIST, SVHN, ...) adds only what is its own: it loads its data, builds its model
and says what its record holds, as a :class:`PreparedRun`; :func:`run_single` does the rest the same way for
all of them. Nothing here knows Hydra: the entry points in ``experiments/`` translate configs into these
explicit arguments.

A run folder holds ``checkpoint.pt`` (resume), ``record.json`` (once finished; every number in ``results/``
comes from one), ``model.pt`` (the trained weights with what rebuilds the model), ``pictures/`` and a
``.lock`` while a process owns it. Every file is written to a hidden temporary name beside it and renamed into
place, so a killed process leaves at most such a temporary, never half a file under a real name; the next
owner of the folder removes those.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from stn_repro.tracking import Tracker
from stn_repro.training.loop import (
    BatchStream,
    Learner,
    Objective,
    SpeedSettings,
    TrainResult,
    TrainSettings,
    run_training,
    save_checkpoint,
    train,
)
from stn_repro.training.objectives import CLASSIFICATION
from stn_repro.training.records import (
    RECORD_NAME,
    as_written,
    collapsed,
    provenance,
    read_record,
    write_record,
)
from stn_repro.viz import save_figure

WEIGHTS_NAME = "model.pt"  # a finished seed's trained model, beside its record
WEIGHTS_FORMAT = 1
LOCK_NAME = ".lock"
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


class RunLocked(RuntimeError):
    """Another live process owns the run folder."""


class RunLock:
    """Exclusive ownership of a run folder while a process trains in it (``with RunLock(run_dir): ...``).

    An advisory ``flock`` on ``<run_dir>/.lock``, which holds the owner's pid, host and start time. The
    kernel drops the lock when its owner dies however it dies (``kill -9`` included), so a lock file left
    by a dead process is stale by construction: the next launch takes it over and says whose it was.
    A second launch while the owner lives raises :class:`RunLocked` naming the owner. (``flock`` is per
    host: on a network file system shared by several hosts, do not launch the same run on two of them.)
    """

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print):
        self.path = Path(run_dir) / LOCK_NAME
        self.log = log
        self._handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(handle)
            handle.close()
            raise RunLocked(
                f"{self.path.parent} is in use by pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
                f"(since {owner.get('started', '?')}): wait for that run to end, or stop it (it checkpoints "
                "on SIGTERM) and relaunch to resume"
            ) from None
        previous = _read_owner(handle)
        if previous:
            self.log(
                f"{self.path.parent}: taking over from pid {previous.get('pid')} on {previous.get('host')} "
                "(that process is gone; its checkpoint, if any, resumes)"
            )
        handle.seek(0)
        handle.truncate()
        owner = {
            "pid": os.getpid(),
            "host": platform.node(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        handle.write(json.dumps(owner) + "\n")
        handle.flush()
        self._handle = handle
        remove_unfinished_writes(self.path.parent, self.log)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            # Empty the file before letting go: a lock file with an owner in it means "that owner died".
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.flush()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# What the atomic writers (save_checkpoint, atomic_write_text, save_figure) name their temporary files:
# hidden, beside the file they become. Only a killed writer leaves one behind.
UNFINISHED_WRITES = (".*.tmp", "pictures/.*.png")


def remove_unfinished_writes(run_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Delete the temporary files a killed process left in ``run_dir`` mid-write; return them.

    Call it only while owning the folder (:class:`RunLock` does): a live owner's temporaries are in use.
    """
    found = sorted(
        path for pattern in UNFINISHED_WRITES for path in Path(run_dir).glob(pattern) if path.is_file()
    )
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        log(
            f"{run_dir}: removed {len(found)} unfinished write(s) a stopped process left "
            f"({', '.join(p.name for p in found)}); the files they were to replace are intact"
        )
    return found


def _read_owner(handle) -> dict[str, Any]:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {"pid": "unknown (unreadable lock file)"}


def read_finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The record in ``run_dir`` if it says the run finished, else ``None``."""
    record_path = Path(run_dir) / RECORD_NAME
    if not record_path.exists():
        return None
    record = read_record(record_path)
    return record if record.get("finished") else None


def log_already_finished(record: dict[str, Any], run_dir: Path, log: Callable[[str], None]) -> None:
    log(
        f"{record['cell']} seed {record['seed']}: already finished ({Path(run_dir) / RECORD_NAME}); "
        f"{record.get('metric', '% test error')} {record['test_error']:.2f}%"
    )


# --- the single-seed job ---------------------------------------------------------------------------------------


@dataclass
class PreparedRun:
    """One seed of one cell of an experiment, ready to train: what the experiment itself provides.

    ``record`` holds the experiment's own record fields (``paper_error``, model description, the identity
    of the test set, ...); :func:`run_single` adds the generic ones. ``weights`` is what rebuilds the model
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


def save_weights(path: Path, run: PreparedRun) -> None:
    """Write the trained model of a finished seed to ``path`` (atomically), with what rebuilds it."""
    state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    save_checkpoint(
        path,
        {"format": WEIGHTS_FORMAT, "cell": run.cell, "seed": run.seed, **run.weights, "state_dict": state},
    )


def read_weights(path: Path | str) -> dict[str, Any]:
    """A ``model.pt`` (or the run folder holding it), checked: what rebuilds the model and ``state_dict``."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: a run saves its weights when it finishes (its record.json says "
            "finished: true); finish the run (relaunch it to resume) or point at a finished run's folder"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a readable weights file ({error}); rerun the job to remake it"
        ) from None
    if not isinstance(state, dict) or state.get("format") != WEIGHTS_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(
            f"{path} is not a weights file of this version of stn-repro (format {found!r}, "
            f"this version reads {WEIGHTS_FORMAT})"
        )
    return state


def run_single(
    prepare: Callable[[torch.device], PreparedRun],
    settings: TrainSettings,
    run_dir: Path,
    *,
    device: str = "auto",
    profile: str,
    reduced_budget: bool,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
    writer: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one seed of one cell in ``run_dir`` (resuming its checkpoint); return its record.

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
            raise ValueError("run_single(writer=False) needs a PreparedRun with make_learner (data parallel)")
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
                save_weights(run_dir / WEIGHTS_NAME, run)
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
    """:func:`run_single` for one seed described by ``spec``: its device (unless ``device`` is given), profile
    and reduced-budget flag; the record keeps ``config``, by default the spec and the settings."""
    return run_single(
        prepare,
        settings,
        run_dir,
        device=spec.device if device is None else device,
        profile=spec.profile,
        reduced_budget=spec.reduced_budget,
        config=config or {"spec": asdict(spec), "settings": asdict(settings)},
        make_tracker=make_tracker,
        log=log,
        writer=writer,
    )


def load_trained(
    path: Path | str, build: Callable[[dict[str, Any]], nn.Module], device: torch.device | str = "cpu"
) -> nn.Module:
    """The model a finished run saved (its ``model.pt`` or run folder), in eval mode on ``device``.

    ``build(state)`` rebuilds the untrained model from what the run's :attr:`PreparedRun.weights` saved
    (``state["kind"]``, ...) and may raise if the file holds another experiment's model; the trained
    ``state_dict`` is then loaded into it.
    """
    state = read_weights(path)
    model = build(state)
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval()


def classifier_weights(
    kind: str,
    transform: str | None,
    input_shape: Sequence[int],
    pool_after_transformer: bool,
    model_options: dict[str, Any],
) -> dict[str, Any]:
    """:attr:`PreparedRun.weights` of a model built as ``build(kind, input_shape, transform=...,
    pool_after_transformer=..., **model_options)`` (distorted MNIST, addition); :func:`rebuild_classifier`
    reads it back."""
    return {
        "kind": kind,
        "transform": transform,
        "input_shape": list(input_shape),
        "pool_after_transformer": pool_after_transformer,
        "model_options": model_options,
    }


def rebuild_classifier(build: Callable[..., tuple[nn.Module, Any]]) -> Callable[[dict[str, Any]], nn.Module]:
    """The ``build`` argument of :func:`load_trained` for weights saved by :func:`classifier_weights`."""

    def rebuild(state: dict[str, Any]) -> nn.Module:
        model, _ = build(
            state["kind"],
            tuple(state["input_shape"]),
            transform=state["transform"],
            pool_after_transformer=state["pool_after_transformer"],
            **state["model_options"],
        )
        return model

    return rebuild


def _train_learner(
    run: PreparedRun,
    settings: TrainSettings,
    run_dir: Path,
    tracker: Tracker,
    log: Callable[[str], None],
    write: bool = True,
) -> TrainResult:
    """Train ``run.make_learner(settings)`` with :func:`~stn_repro.training.loop.run_training` (one model);
    ``write=False``: no checkpoint files, no pictures (see :func:`run_single`)."""
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
