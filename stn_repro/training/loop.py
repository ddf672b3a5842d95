"""The training loop: explicit, resumable, and loud about what it is doing.

One loop serves every classification experiment. It takes a model, a batch stream (anything with
``next_batch() -> (x, y)``, ``state_dict()`` and ``load_state_dict()``), evaluation sets and explicit
settings; it knows nothing of Hydra or W&B (progress goes to an optional ``Tracker``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHECKPOINT_NAME = "checkpoint.pt"


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
    log_every: int = 500
    eval_every: int = 10_000  # 0: evaluate at the end only
    eval_batch_size: int = 1_000
    checkpoint_every: int = 5_000  # 0: only on interruption and at the end
    picture_every: int = 25_000  # 0: pictures at the end only
    max_loss: float = 1e3  # a finite loss above this counts as exploded
    stop_after: int | None = None  # leave after this many iterations in this process (resume later)

    def lr_at(self, iteration: int) -> float:
        return self.lr * self.lr_gamma ** (iteration // self.lr_step_every)


AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16}


@dataclass
class SpeedSettings:
    """How a training step runs; none of these changes what is trained (the defaults: the plain float32 path).

    - ``channels_last``: model weights and input batches in NHWC memory layout (``torch.channels_last``),
      which cuDNN and oneDNN convolutions often prefer. Same values, other kernels: float rounding differs.
    - ``autocast``: ``"none"`` (float32) or ``"bf16"`` (``torch.autocast`` with bfloat16 around the forward
      pass and the loss; the weights, gradients and SGD update stay float32). Works on CPU and CUDA.
    - ``compile``: wrap the model in ``torch.compile`` for the training forward pass (the first steps pay the
      compilation); evaluation and checkpoints use the uncompiled module, which shares the parameters.
    """

    channels_last: bool = False
    autocast: str = "none"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.autocast!r}")


class TrainStep:
    """One SGD step of ``model`` with ``speed`` settings, split in two so the loss can be checked in between.

    ``loss(x, y)`` runs the forward pass and the cross-entropy (a 0-d float32 tensor with its graph);
    ``update(loss)`` back-propagates it and steps ``optimizer``. With default :class:`SpeedSettings` this
    is exactly the plain ``F.cross_entropy(model(x), y)``, ``zero_grad``, ``backward``, ``step``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, speed: SpeedSettings):
        self.speed = speed
        self.optimizer = optimizer
        if speed.channels_last:
            model.to(memory_format=torch.channels_last)  # in place: the optimiser keeps the same tensors
        self.forward = torch.compile(model) if speed.compile else model
        self.device_type = _device_of(model).type

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.speed.autocast]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        if self.speed.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.forward(x)
        # The loss in float32: bf16 log-softmax loses digits the SGD update would then amplify.
        return F.cross_entropy(logits.float(), y)

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
        groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1_000) -> float:
    """% classification error; ``images`` uint8 ``[N, C, H, W]`` (or float in [0, 1]) on the model's device."""
    was_training = model.training
    model.eval()
    wrong = 0
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
        wrong += (model(batch).argmax(1) != labels[start : start + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * wrong / images.shape[0]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
) -> TrainResult:
    """Train ``model`` on ``stream`` for ``settings.iterations`` SGD steps, resuming from ``run_dir``.

    Evaluation sets map a name to ``(images, labels)`` on the model's device. A checkpoint in ``run_dir``
    (written every ``checkpoint_every`` steps, on Ctrl-C and at the end) is picked up on relaunch, and the
    run continues exactly as if it had never stopped: model, optimiser, data stream and RNG state are all
    restored. A NaN, infinite or exploded loss stops the run with :class:`TrainingDiverged`; the last
    checkpoint on disk is then the last good state. ``speed`` (default: the plain float32 path) sets how each
    step runs; see :class:`SpeedSettings`.
    """
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    optimizer = make_optimizer(model, settings)
    start, wall_before, history = 0, 0.0, []
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=_device_of(model), weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        start, wall_before, history = state["iteration"], state["wall_time_s"], state["history"]
        log(f"resuming from {checkpoint_path} at iteration {start:,}")

    def checkpoint(iteration: int, wall: float) -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "stream": stream.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "iteration": iteration,
                "wall_time_s": wall,
                "history": history,
                "settings": asdict(settings),
            },
        )

    def run_evaluation(iteration: int) -> dict[str, float]:
        errors = {name: evaluate(model, x, y, settings.eval_batch_size) for name, (x, y) in eval_sets.items()}
        history.append({"iteration": iteration, **{f"{k}_error": v for k, v in errors.items()}})
        if tracker is not None:
            tracker.log({f"{k}/error": v for k, v in errors.items()}, step=iteration)
        log(f"eval  iter {iteration:>7,} | " + " | ".join(f"{k} error {v:.2f}%" for k, v in errors.items()))
        return errors

    model.train()
    step = TrainStep(model, optimizer, speed or SpeedSettings())
    end = (
        settings.iterations
        if settings.stop_after is None
        else min(settings.iterations, start + settings.stop_after)
    )
    t0 = time.perf_counter()
    window_start, window_images, errors = t0, 0, {}
    iteration = start
    try:
        while iteration < end:
            lr = settings.lr_at(iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            x, y = stream.next_batch()
            loss = step.loss(x, y)
            loss_value = loss.item()
            check_loss(loss_value, iteration, settings, checkpoint_path)
            step.update(loss)
            iteration += 1
            window_images += batch_size

            if iteration % settings.log_every == 0 or iteration == end:
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                log(
                    f"train iter {iteration:>7,}/{settings.iterations:,} | loss {loss_value:.4f} | lr {lr:.1e} | "
                    f"{rate:,.0f} img/s"
                )
                if tracker is not None:
                    tracker.log(
                        {"train/loss": loss_value, "train/lr": lr, "train/images_per_s": rate}, step=iteration
                    )
                window_start, window_images = now, 0
            if (
                settings.eval_every
                and iteration % settings.eval_every == 0
                and iteration < settings.iterations
            ):
                errors = run_evaluation(iteration)
            if on_picture is not None and settings.picture_every and iteration % settings.picture_every == 0:
                on_picture(iteration)
            if settings.checkpoint_every and iteration % settings.checkpoint_every == 0 and iteration < end:
                checkpoint(iteration, wall_before + time.perf_counter() - t0)
    except KeyboardInterrupt:
        checkpoint(iteration, wall_before + time.perf_counter() - t0)
        log(
            f"interrupted at iteration {iteration:,}; checkpoint saved to {checkpoint_path}: relaunch to resume"
        )
        raise

    finished = iteration >= settings.iterations
    if finished:
        errors = run_evaluation(iteration)
        pictured = settings.picture_every and iteration % settings.picture_every == 0
        if on_picture is not None and not pictured:
            on_picture(iteration)
    wall = wall_before + time.perf_counter() - t0
    checkpoint(iteration, wall)
    return TrainResult(
        iterations=iteration, finished=finished, errors=errors, wall_time_s=wall, history=history
    )


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
