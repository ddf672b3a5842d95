"""The training loop: explicit, resumable, and loud about what it is doing.

One loop (:func:`run_training`) serves every classification experiment, whether it trains one model
(:func:`train`) or several stacked ones (:func:`~stn_repro.training.stacked.train_stacked`). It drives a
*learner*: the model(s), their optimiser and batch stream(s) behind one ``step()``. The loop owns all the
bookkeeping: the lr schedule, the deferred divergence check, logging with throughput, evaluation, pictures,
atomic checkpoints and exact resume. It knows nothing of Hydra or W&B (progress goes to optional trackers).

Why the loss check is deferred: reading a loss back to the host (``loss.item()``) every step makes the CPU
wait for the GPU each iteration, which costs small models a large share of their throughput. The loop
instead copies each step's loss into a buffer on the device and reads the buffer back once per logging
window and before anything is written (a checkpoint, an evaluation, a picture). A NaN or exploded loss is
still found, at the iteration where it happened, before any checkpoint of the broken state exists.
"""

from __future__ import annotations

import math
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from stn_repro.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    check_checkpoint,
    check_settings,
    read_checkpoint,
    save_checkpoint,
)
from stn_repro.training.learners import BatchStream, Learner, SingleModel, spread_on_test_set
from stn_repro.training.objectives import Objective
from stn_repro.training.records import device_name, git_commit
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.transformers.module import spread_collapsed

from .objectives import CLASSIFICATION


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


def check_loss(
    value: float, iteration: int, settings: TrainSettings, checkpoint_path: Path, who: str = ""
) -> None:
    """Raise :class:`TrainingDiverged` if ``value`` is not finite or above ``settings.max_loss``.

    The message names the checkpoint a relaunch resumes from and the fix. ``who`` prefixes it (e.g. the
    index of one of several stacked models).
    """
    if math.isfinite(value) and value <= settings.max_loss:
        return
    why = "not finite" if not math.isfinite(value) else f"above max_loss={settings.max_loss}"
    kept = (
        f"the last good checkpoint is {checkpoint_path}"
        if checkpoint_path.exists()
        else "no checkpoint was written yet"
    )
    raise TrainingDiverged(
        f"{who}loss is {value} at iteration {iteration:,} ({why}); {kept}. Lower the learning rate "
        f"(e.g. optim.lr={settings.lr / 10:g}) or the localisation lr multiplier, then relaunch: the run "
        "resumes from that checkpoint."
    )


@dataclass
class TrainResult:
    iterations: int
    finished: bool
    errors: dict[str, float]  # % error per evaluation set, at the last evaluation
    wall_time_s: float  # training time summed over every process that worked on this run
    history: list[dict[str, Any]] = field(default_factory=list)
    # Per spatial transformer, the spread of its predicted parameters at the last evaluation
    # (spread_on_test_set); None for a model without one.
    localisation_spread: list[float] | None = None
    stopped_by: str | None = None  # "SIGINT" or "SIGTERM" when a signal ended the run early
    # One entry per launch that trained this run (the first and every resume): the iteration it started
    # at, the commit, device and host it ran on and when. A run resumed in another session or on another
    # machine says so in its record.
    launches: list[dict[str, Any]] = field(default_factory=list)


class StopSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM (``kill``, a cluster's pre-emption) ask the loop to stop at
    the end of the current step instead of raising wherever the process happens to be.

    The loop then checkpoints and returns normally, so the run ends with one line and no traceback. A second
    Ctrl-C raises ``KeyboardInterrupt`` at once (for a loop that does not answer); the loop still saves a
    checkpoint of the last completed step. Signal handlers exist only in the main thread: elsewhere this
    does nothing and the default behaviour stays.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # Optional: ``models``, the learner's models as ``nn.Module`` objects (after ``export``), one per model;
    # where given, every evaluation also measures each one's localisation spread (spread_on_test_set).
    # Optional, for learners spread over several processes (data parallel): ``agree_to_stop(received)``
    # is called before every step with this process's pending signal name (or ``None``) and returns the
    # one every process stops on (or ``None``), so all of them stop after the same step.


class LossWindow:
    """The losses of the steps since the last check, kept on the device until :meth:`check` reads them."""

    def __init__(self, length: int, num_models: int, device: torch.device):
        self.values = torch.zeros(length, num_models, device=device)
        self.first_iteration, self.count = 0, 0

    def add(self, iteration: int, losses: Tensor) -> None:
        if self.count == 0:
            self.first_iteration = iteration
        self.values[self.count].copy_(losses)  # a device-side copy: the host does not wait
        self.count += 1

    def check(self, settings: TrainSettings, checkpoint_path: Path) -> list[float] | None:
        """Read the window back (one sync), raise :class:`TrainingDiverged` at the first bad loss, reset;
        return each model's mean loss over the window (``None`` for an empty window)."""
        if self.count == 0:
            return None
        rows = self.values[: self.count].tolist()
        num_models = len(rows[0])
        for offset, row in enumerate(rows):
            for index, value in enumerate(row):
                who = f"model {index}'s " if num_models > 1 else ""
                check_loss(value, self.first_iteration + offset, settings, checkpoint_path, who=who)
        self.count = 0
        return [sum(row[i] for row in rows) / len(rows) for i in range(num_models)]


def run_training(
    learner: Learner,
    eval_sets: dict[str, tuple[Tensor, Tensor]],
    settings: TrainSettings,
    run_dir: Path,
    *,
    trackers: Sequence[Any] | None = None,
    on_picture: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    extra_state: dict[str, Any] | None = None,
    write: bool = True,
) -> list[TrainResult]:
    """Train ``learner`` for ``settings.iterations`` steps, resuming from ``run_dir``; one result per model.

    ``trackers`` (one per model, or ``None``) receive each model's train loss, lr, throughput and eval errors.
    ``extra_state`` is stored in the checkpoint for the record (e.g. the speed settings). ``write=False``
    (the processes other than rank 0 of a data-parallel run): the checkpoint is read to resume, and
    ``learner.state_dict()`` is still taken at every checkpoint (it may gather state from every process),
    but nothing is written.
    """
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    num_models = learner.num_models
    trackers = list(trackers) if trackers is not None else [None] * num_models
    if len(trackers) != num_models:
        raise ValueError(f"{len(trackers)} trackers for {num_models} models: give one per model (or none)")
    start, wall_before = 0, 0.0
    histories: list[list[dict[str, Any]]] = [[] for _ in range(num_models)]
    launches: list[dict[str, Any]] = []
    train_losses = TrainLossMeans(num_models)
    if checkpoint_path.exists():
        state = read_checkpoint(checkpoint_path, learner.device)
        check_checkpoint(state, checkpoint_path, num_models)
        check_settings(state, checkpoint_path, settings)
        learner.load_state_dict(state["learner"])
        torch.set_rng_state(state["torch_rng"])
        start, wall_before, histories = state["iteration"], state["wall_time_s"], state["histories"]
        train_losses.load_state_dict(state.get("train_losses"))
        # Checkpoints written before launches were kept: their earlier launches are unknown.
        launches = state.get("launches") or [{"iteration": 0, "commit": "not recorded"}]
        models = f"{num_models} stacked models " if num_models > 1 else ""
        log(f"resuming {models}from {checkpoint_path} at iteration {start:,}")

    launches = [*launches, _this_launch(start, learner.device)]
    losses = LossWindow(max(1, settings.log_every), num_models, learner.device)

    def check_losses() -> list[float] | None:
        """Read back and check the losses since the last check; they also count toward the history's
        mean train loss at the next log point."""
        count = losses.count
        means = losses.check(settings, checkpoint_path)
        if means is not None:
            train_losses.add(means, count)
        return means

    def checkpoint(iteration: int, wall: float) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "num_models": num_models,
            "learner": learner.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "iteration": iteration,
            "wall_time_s": wall,
            "histories": histories,
            "train_losses": train_losses.state_dict(),
            "launches": launches,
            "settings": asdict(settings),
            **(extra_state or {}),
        }
        if write:
            save_checkpoint(checkpoint_path, state)

    def run_evaluation(iteration: int) -> tuple[list[dict[str, float]], list[list[float] | None]]:
        """Each model's errors on ``eval_sets`` and its localisation spread, logged and kept in its history."""
        learner.export()
        all_errors = learner.evaluate(eval_sets, settings.eval_batch_size)
        models = getattr(learner, "models", None)
        spreads = [spread_on_test_set(m, eval_sets) for m in models] if models else [None] * num_models
        for index, (errors, spread) in enumerate(zip(all_errors, spreads, strict=True)):
            values: dict[str, Any] = {f"{k}_error": v for k, v in errors.items()}
            if spread is not None:
                values["localisation_spread"] = [round(v, 6) for v in spread]
            # A relaunch from the final checkpoint (the process was killed before its record was written)
            # evaluates the same weights again: still one entry per evaluation point.
            _add_to_history(histories[index], iteration, values)
            if trackers[index] is not None:
                tracked = {f"{k}/error": v for k, v in errors.items()}
                tracked.update({f"localisation/spread_{i}": v for i, v in enumerate(spread or [])})
                trackers[index].log(tracked, step=iteration)
            who = f" | model {index}" if num_models > 1 else ""
            spread_text = "" if spread is None else " | spread " + ", ".join(f"{v:.3g}" for v in spread)
            log(
                f"eval  iter {iteration:>7,}{who} | "
                + " | ".join(f"{k} error {v:.2f}%" for k, v in errors.items())
                + spread_text
            )
            if spread_collapsed(spread):
                log(
                    f"WARNING{who}: a localisation net predicts the same transform for every test image: "
                    "its transformer is a fixed warp (dead hidden units?)"
                )
        return all_errors, spreads

    def picture(iteration: int) -> None:
        if on_picture is not None:
            learner.export()
            on_picture(iteration)

    end = (
        settings.iterations
        if settings.stop_after is None
        else min(settings.iterations, start + settings.stop_after)
    )
    bar = progress_bar(settings, start, end, num_models) if write else None
    if bar is not None:
        plain_log = log

        def log(text: str) -> None:  # the lines go above the bar, which stays at the bottom
            with tqdm.external_write_mode(file=sys.stderr):
                plain_log(text)

    t0 = time.perf_counter()
    window_start, window_images, window_paused = t0, 0, 0.0
    errors: list[dict[str, float]] = [{} for _ in range(num_models)]
    spreads: list[list[float] | None] = [None] * num_models
    iteration = start
    stop = StopSignals()
    agree_to_stop = getattr(learner, "agree_to_stop", None)

    def stopping() -> bool:
        if agree_to_stop is None:
            return stop.received is not None
        agreed = agree_to_stop(stop.received)  # every process stops after the same step
        if agreed is not None and stop.received is None:
            stop.received = agreed
        return agreed is not None

    with stop:  # also over the final evaluation: a signal then lets the run finish
        try:
            while iteration < end and not stopping():
                lr = settings.lr_at(iteration)
                for group in learner.optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                losses.add(iteration, learner.step())
                iteration += 1
                window_images += learner.images_per_step
                if bar is not None:
                    bar.update()

                if iteration % settings.log_every == 0 or iteration == end:
                    means = check_losses()
                    now = time.perf_counter()
                    rate = window_images / max(now - window_start - window_paused, 1e-9)
                    shown = "loss " if num_models == 1 else "losses "
                    log(
                        f"train iter {iteration:>7,}/{settings.iterations:,} | {shown}"
                        + " ".join(f"{v:.4f}" for v in means)
                        + f" | lr {lr:.1e} | {rate:,.0f} img/s"
                    )
                    # The history's train loss: the mean over every step since the previous multiple of
                    # log_every (carried through checkpoints, so a resumed run records the same values).
                    if iteration % settings.log_every == 0 or iteration == settings.iterations:
                        for history, mean in zip(histories, train_losses.take(), strict=True):
                            _add_to_history(history, iteration, {"train_loss": round(mean, 5), "lr": lr})
                    for tracker, mean in zip(trackers, means, strict=True):
                        if tracker is not None:
                            tracker.log(
                                {"train/loss": mean, "train/lr": lr, "train/images_per_s": rate},
                                step=iteration,
                            )
                    window_start, window_images, window_paused = now, 0, 0.0
                eval_due = (
                    settings.eval_every
                    and iteration % settings.eval_every == 0
                    and iteration < settings.iterations
                )
                picture_due = settings.picture_every and iteration % settings.picture_every == 0
                checkpoint_due = (
                    settings.checkpoint_every
                    and iteration % settings.checkpoint_every == 0
                    and iteration < end
                )
                if eval_due or picture_due or checkpoint_due:
                    check_losses()  # never evaluate, draw or checkpoint a diverged state
                    paused_from = time.perf_counter()
                    if eval_due:
                        errors, spreads = run_evaluation(iteration)
                    if picture_due:
                        picture(iteration)
                    if checkpoint_due:
                        checkpoint(iteration, wall_before + time.perf_counter() - t0)
                    window_paused += time.perf_counter() - paused_from  # not training: kept out of img/s
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            check_losses()
            checkpoint(iteration, wall_before + time.perf_counter() - t0)
            log(
                f"interrupted at iteration {iteration:,}; checkpoint saved to {checkpoint_path}: relaunch to resume"
            )
            raise

        if bar is not None:
            bar.close()
        check_losses()
        finished = iteration >= settings.iterations
        if finished:
            errors, spreads = run_evaluation(iteration)
            pictured = settings.picture_every and iteration % settings.picture_every == 0
            if not pictured:
                picture(iteration)
        learner.export()
        wall = wall_before + time.perf_counter() - t0
        checkpoint(iteration, wall)
    if not finished:
        why = (
            f"on {stop.received}" if stop.received else f"after stop_after={settings.stop_after:,} iterations"
        )
        log(
            f"stopped {why} at iteration {iteration:,} of {settings.iterations:,}; checkpoint saved to "
            f"{checkpoint_path}: relaunch to resume"
        )
    return [
        TrainResult(
            iterations=iteration,
            finished=finished,
            errors=errors[i],
            wall_time_s=wall,
            history=histories[i],
            localisation_spread=spreads[i],
            stopped_by=stop.received if not finished else None,
            launches=launches,
        )
        for i in range(num_models)
    ]


def progress_bar(settings: TrainSettings, start: int, end: int, num_models: int) -> tqdm | None:
    """A tqdm bar over the run's iterations (from ``start``, resumed runs included) with its rate and the time
    left to ``end``, when ``settings.progress_bar`` asks for one; ``None`` otherwise."""
    if not settings.progress_bar or start >= end:
        return None
    what = "train" if num_models == 1 else f"train {num_models} models"
    width = shutil.get_terminal_size(fallback=(100, 24)).columns  # 0 where the terminal does not say
    return tqdm(
        total=end, initial=start, desc=what, unit="it", file=sys.stderr, ncols=width if width >= 40 else 100
    )


def _this_launch(start: int, device: torch.device) -> dict[str, Any]:
    """Who trains the run from iteration ``start`` on: commit, device, host and time."""
    return {
        "iteration": start,
        "commit": git_commit(),
        "device": device_name(torch.device(device)),
        "host": platform.node(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class TrainLossMeans:
    """Each model's summed train loss and step count since the last history point, checkpointed with the
    run so that a run resumed between two log points records the same mean as one that never stopped."""

    def __init__(self, num_models: int):
        self.sums, self.count = [0.0] * num_models, 0

    def add(self, means: list[float], count: int) -> None:
        self.sums = [s + m * count for s, m in zip(self.sums, means, strict=True)]
        self.count += count

    def take(self) -> list[float]:
        """The means since the last call (NaN where no step was added), then start afresh."""
        means = [s / self.count if self.count else math.nan for s in self.sums]
        self.sums, self.count = [0.0] * len(self.sums), 0
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": list(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:  # checkpoints written before this field: start the window afresh
            self.sums, self.count = list(state["sums"]), state["count"]


def _add_to_history(history: list[dict[str, Any]], iteration: int, values: dict[str, Any]) -> None:
    """Record ``values`` at ``iteration``: one entry per iteration, the mean train loss of the log window
    before it (with its lr) and the evaluation errors there, in iteration order."""
    if history and history[-1]["iteration"] == iteration:
        history[-1].update(values)
    else:
        history.append({"iteration": iteration, **values})


def train(
    model: nn.Module,
    stream: BatchStream,
    eval_sets: dict[str, tuple[Tensor, Tensor]],
    settings: TrainSettings,
    run_dir: Path,
    *,
    batch_size: int,
    tracker: Any = None,
    on_picture: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    speed: SpeedSettings | None = None,
    objective: Objective = CLASSIFICATION,
) -> TrainResult:
    """Train ``model`` on ``stream`` for ``settings.iterations`` SGD steps, resuming from ``run_dir``.

    Evaluation sets map a name to ``(images, labels)`` on the model's device. A checkpoint in ``run_dir``
    (written every ``checkpoint_every`` steps, on Ctrl-C and at the end) is picked up on relaunch, and the
    run continues exactly as if it had never stopped: model, optimiser, data stream and RNG state are all
    restored. A NaN, infinite or exploded loss stops the run with :class:`TrainingDiverged` within
    ``log_every`` steps, naming the iteration; no checkpoint of the diverged state is written, so the last
    checkpoint on disk is the last good state. ``speed`` (default: the plain float32 path) sets how each
    step runs; see :class:`SpeedSettings`. ``objective`` (default: one class per image) gives the loss and
    counts the errors (:mod:`stn_repro.training.objectives`).
    """
    speed = speed or SpeedSettings()
    model.train()
    learner = SingleModel(model, stream, settings, speed, batch_size, objective)
    (result,) = run_training(
        learner,
        eval_sets,
        settings,
        run_dir,
        trackers=[tracker],
        on_picture=on_picture,
        log=log,
        extra_state={"speed": asdict(speed)},
    )
    return result
