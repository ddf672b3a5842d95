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

import contextlib
import math
import os
import platform
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from stn_repro.transformers.module import localisation_spread, spread_collapsed

from .objectives import CLASSIFICATION, Classification, SequenceClassification
from .records import device_name, git_commit, publish_atomically

Objective = Classification | SequenceClassification

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: one layout for single and stacked runs ({"learner": ..., "histories": ...})


class BatchStream(Protocol):
    def next_batch(self) -> tuple[Tensor, Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


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
class TrainSettings:
    """Optimisation and bookkeeping settings (defaults: the paper's MNIST protocol, Appendix A.4)."""

    iterations: int = 150_000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_every: int = 50_000
    lr_gamma: float = 0.1
    localisation_lr_multiplier: float = 1.0
    log_every: int = 500  # also the longest the loss goes unchecked on the host (see the module docstring)
    eval_every: int = 10_000  # 0: evaluate at the end only
    eval_batch_size: int = 1_000
    checkpoint_every: int = 5_000  # 0: only on interruption and at the end
    picture_every: int = 25_000  # 0: pictures at the end only
    max_loss: float = 1e3  # a finite loss above this counts as exploded
    stop_after: int | None = None  # leave after this many iterations in this process (resume later)
    # Iterations at which the lr is multiplied by lr_gamma (e.g. CUB's 10k, 20k, 25k); empty: every
    # lr_step_every iterations instead.
    lr_milestones: tuple[int, ...] = ()
    # "step": the papers' steps (lr_milestones or every lr_step_every). "cosine": half a cosine from lr down
    # to 0 at the last iteration (the `fast` profile's schedule, not the paper's).
    lr_schedule: str = "step"
    warmup_iterations: int = 0  # the lr rises linearly from lr / warmup to lr over these first iterations
    nesterov: bool = False  # Nesterov momentum (torch.optim.SGD's nesterov)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )

    def lr_at(self, iteration: int) -> float:
        if iteration < self.warmup_iterations:
            return self.lr * (iteration + 1) / self.warmup_iterations
        if self.lr_schedule == "cosine":
            done = (iteration - self.warmup_iterations) / max(1, self.iterations - self.warmup_iterations)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        if self.lr_milestones:
            return self.lr * self.lr_gamma ** sum(iteration >= m for m in self.lr_milestones)
        return self.lr * self.lr_gamma ** (iteration // self.lr_step_every)


LR_SCHEDULES = ("step", "cosine")


AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16}
# torch.compile modes; "reduce-overhead" also records the compiled forward and backward graphs as CUDA graphs
# (replayed with one launch each: what small models on a GPU are bound by). On the CPU it compiles only.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class SpeedSettings:
    """How a training step runs; none of these changes what is trained (the defaults: the plain float32 path).

    - ``channels_last``: model weights and input batches in NHWC memory layout (``torch.channels_last``),
      which cuDNN and oneDNN convolutions often prefer. Same values, other kernels: float rounding differs.
    - ``autocast``: ``"none"`` (float32) or ``"bf16"`` (``torch.autocast`` with bfloat16 around the forward
      pass and the loss; the weights, gradients and SGD update stay float32). Works on CPU and CUDA.
    - ``compile``: wrap the model in ``torch.compile`` for the training forward pass (the first steps pay the
      compilation); evaluation and checkpoints use the uncompiled module, which shares the parameters.
    - ``compile_mode``: the ``torch.compile`` mode when ``compile`` is on; ``"reduce-overhead"`` replays the
      fixed-shape forward and backward as CUDA graphs on a GPU.
    """

    channels_last: bool = False
    autocast: str = "none"
    compile: bool = False
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.autocast!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}"
            )

    def autocast_context(self, device_type: str) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.autocast]
        return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


class TrainStep:
    """One SGD step of ``model`` with ``speed`` settings, split in two so the loss can be kept in between.

    ``loss(x, y)`` runs the forward pass and the ``objective``'s loss (a 0-d float32 tensor with its graph);
    ``update(loss)`` back-propagates it and steps ``optimizer``. With default :class:`SpeedSettings` and
    the classification objective this is exactly the plain ``F.cross_entropy(model(x), y)``, ``zero_grad``,
    ``backward``, ``step``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        speed: SpeedSettings,
        objective: Objective = CLASSIFICATION,
    ):
        self.speed = speed
        self.objective = objective
        self.optimizer = optimizer
        if speed.channels_last:
            model.to(memory_format=torch.channels_last)  # in place: the optimiser keeps the same tensors
        self.forward = torch.compile(model, mode=speed.compile_mode) if speed.compile else model
        self.device_type = _device_of(model).type
        # CUDA-graph replays reuse their output memory: mark where a new training step starts.
        self.marks_steps = speed.compile and speed.compile_mode in ("reduce-overhead", "max-autotune")

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        if self.marks_steps:
            torch.compiler.cudagraph_mark_step_begin()
        if self.speed.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.speed.autocast_context(self.device_type):
            logits = self.forward(x)
        return self.objective.loss(logits, y)

    def update(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


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


def localisation_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of every spatial transformer's localisation net (they may get their own lr)."""
    params: list[nn.Parameter] = []
    for module in model.modules():
        loc = getattr(module, "localisation", None)
        if isinstance(loc, nn.Module):
            params += list(loc.parameters())
    return params


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.SGD:
    loc_ids = {id(p) for p in localisation_parameters(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in loc_ids], "lr_scale": 1.0},
        {
            "params": [p for p in model.parameters() if id(p) in loc_ids],
            "lr_scale": settings.localisation_lr_multiplier,
        },
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(
        groups,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov,
    )


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 1_000,
    objective: Objective = CLASSIFICATION,
) -> float:
    """% of ``images`` the model gets wrong (as ``objective`` counts it); ``images`` uint8 ``[N, C, H, W]``
    (or float in [0, 1]) on the model's device."""
    wrong = wrong_answers(model, images, labels, batch_size, objective)
    return 100.0 * wrong.sum().item() / images.shape[0]  # summed on the device: one sync


def wrong_answers(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 1_000,
    objective: Objective = CLASSIFICATION,
) -> Tensor:
    """Which of ``images`` the model gets wrong, ``[N]`` bool on the labels' device (see :func:`evaluate`)."""
    was_training = model.training
    model.eval()
    wrong = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
            wrong.append(objective.wrong(model(batch), labels[start : start + batch_size]).bool())
    model.train(was_training)
    return torch.cat(wrong)


# How many of a run's test images measure its transformers' spread (:func:`spread_on_test_set`).
SPREAD_IMAGES = 256


def spread_on_test_set(model: nn.Module, eval_sets: dict[str, tuple[Tensor, Tensor]]) -> list[float] | None:
    """:func:`~stn_repro.transformers.localisation_spread` of ``model`` over the first
    :data:`SPREAD_IMAGES` images of its test set; ``None`` for a model without spatial transformers, and
    for a run whose learner reads its own test images (CUB's loader: no ``test`` in ``eval_sets``)."""
    if "test" not in eval_sets:
        return None
    spread = localisation_spread(model, eval_sets["test"][0][:SPREAD_IMAGES])
    return spread or None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        publish_atomically(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Learner(Protocol):
    """What :func:`run_training` drives: ``num_models`` models with their optimiser and batch stream(s).

    ``step()`` draws the next batch(es) and takes one SGD step, returning the step's losses as a detached
    ``[num_models]`` tensor on the device (nothing is read back to the host). ``export()`` makes the
    ``nn.Module`` objects that ``evaluate`` and picture callbacks see hold the current values.
    """

    num_models: int
    images_per_step: int
    optimizer: torch.optim.Optimizer
    device: torch.device

    def step(self) -> Tensor: ...
    def export(self) -> None: ...
    def evaluate(
        self, eval_sets: dict[str, tuple[Tensor, Tensor]], batch_size: int
    ) -> list[dict[str, float]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # Optional: ``models``, the learner's models as ``nn.Module`` objects (after ``export``), one per model;
    # where given, every evaluation also measures each one's localisation spread (spread_on_test_set).
    # Optional, for learners spread over several processes (data parallel): ``agree_to_stop(received)``
    # is called before every step with this process's pending signal name (or ``None``) and returns the
    # one every process stops on (or ``None``), so all of them stop after the same step.


class SingleModel:
    """The learner of :func:`train`: one model, one stream, one :class:`TrainStep`."""

    def __init__(
        self,
        model: nn.Module,
        stream: BatchStream,
        settings: TrainSettings,
        speed: SpeedSettings,
        batch_size: int,
        objective: Objective = CLASSIFICATION,
    ):
        self.model, self.stream, self.objective = model, stream, objective
        self.models = [model]  # what run_training inspects at each evaluation (see Learner)
        self.num_models, self.images_per_step = 1, batch_size
        self.device = _device_of(model)
        self.optimizer = make_optimizer(model, settings)
        self.train_step = TrainStep(model, self.optimizer, speed, objective)

    def step(self) -> Tensor:
        loss = self.train_step.loss(*self.stream.next_batch())
        self.train_step.update(loss)
        return loss.detach().reshape(1)

    def export(self) -> None:
        pass  # the model is trained in place

    def evaluate(
        self, eval_sets: dict[str, tuple[Tensor, Tensor]], batch_size: int
    ) -> list[dict[str, float]]:
        return [
            {
                name: evaluate(self.model, x, y, batch_size, self.objective)
                for name, (x, y) in eval_sets.items()
            }
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stream": self.stream.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])


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
        _check_checkpoint(state, checkpoint_path, num_models)
        _check_settings(state, checkpoint_path, settings)
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
            check_losses()
            checkpoint(iteration, wall_before + time.perf_counter() - t0)
            log(
                f"interrupted at iteration {iteration:,}; checkpoint saved to {checkpoint_path}: relaunch to resume"
            )
            raise

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


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; it has been moved aside, not deleted."""


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint; an unreadable one (truncated, corrupt, not a checkpoint) is renamed to
    ``<name>.corrupt-<time>`` beside it, so nothing overwrites it and a relaunch starts the run afresh, and
    :class:`CheckpointError` says so."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(state, dict):
            raise ValueError(f"it holds a {type(state).__name__}, not a checkpoint")
        return state
    except Exception as error:
        aside = _set_aside(path)
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {str(error)[:200]}); it was moved to "
            f"{aside}. Relaunch to start this run afresh (or restore a good copy to {path} to resume)"
        ) from None


def _set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<time>`` (``-2``, ``-3``, ... if taken) and return the new path:
    never over an earlier copy set aside."""
    stem = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    aside, number = stem, 1
    while True:
        try:
            os.link(path, aside)  # fails if `aside` exists: nothing set aside before is overwritten
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: rename onto a free name
            if not aside.exists():
                os.replace(path, aside)
                return aside
        else:
            path.unlink()
            return aside
        number += 1
        aside = stem.with_name(f"{stem.name}-{number}")


# What a checkpoint's run must share with the run that resumes it: the settings that change the training.
# (Bookkeeping such as log_every, eval_every or stop_after may change between launches.)
RESUME_MUST_MATCH = (
    "iterations",
    "lr",
    "momentum",
    "weight_decay",
    "lr_step_every",
    "lr_gamma",
    "localisation_lr_multiplier",
    "lr_milestones",
    "lr_schedule",
    "warmup_iterations",
    "nesterov",
)


def _check_settings(state: dict[str, Any], path: Path, settings: TrainSettings) -> None:
    saved = state.get("settings") or {}
    changed = [
        f"{key} {saved[key]!r} -> {getattr(settings, key)!r}"
        for key in RESUME_MUST_MATCH
        if key in saved and saved[key] != getattr(settings, key)
    ]
    if changed:
        raise ValueError(
            f"{path} was trained with other settings ({'; '.join(changed)}): resuming would mix two "
            "trainings. Relaunch with the settings it was started with, or move the run folder away to "
            "start afresh"
        )


def _check_checkpoint(state: dict[str, Any], path: Path, num_models: int) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} was written by an older version of stn-repro (checkpoint format "
            f"{state.get('format', 1)}, this version reads {CHECKPOINT_FORMAT}); delete it to start the run "
            "afresh, or finish the run with the version that started it"
        )
    if state["num_models"] != num_models:
        raise ValueError(
            f"{path} holds {state['num_models']} stacked model(s), not {num_models}: it belongs to another "
            "run; delete it or point the run elsewhere"
        )


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


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
