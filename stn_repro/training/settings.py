"""What a training run is told: the optimisation and bookkeeping (:class:`TrainSettings`, defaults the
paper's MNIST protocol) and how each step runs (:class:`SpeedSettings`, which never changes what is
trained). Plain validated dataclasses: the Hydra entry points in ``experiments/`` build them from configs.
"""

from __future__ import annotations

import contextlib
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import torch


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
    # A progress bar (tqdm: rate and time left) beside the log lines; for a terminal, not for logs.
    progress_bar: bool = False

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
AUTOCAST_CHOICES = (*AUTOCAST_DTYPES, "auto")


# The CPU flags Linux lists for native bfloat16 arithmetic: Intel's AMX tiles and AVX-512 BF16 (Intel since
# Cooper Lake, AMD since Zen 4). Without either, oneDNN emulates bfloat16 (not measured here: `auto` stays
# float32 there).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """Which of ``BF16_CPU_FLAGS`` this CPU lists (Linux's ``flags`` line); none where the flags cannot be
    read (another OS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    listed = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in listed)


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model as Linux names it (``model name``), e.g. ``AMD EPYC 9R14``; the machine's architecture
    where it cannot be read (another OS), since ``platform.processor()`` is empty on Linux."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return model or platform.processor() or platform.machine() or "unknown CPU"


def cpu_has_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (``cpu_bf16_flags``), where a bfloat16 training
    step ran faster than float32 in every measured cell: 1.6-2.4x with AMX tiles, 1.1-2.2x with AVX-512 BF16
    alone (docs/speed.md)."""
    return bool(cpu_bf16_flags(cpuinfo))


def resolve_autocast(value: str, device: torch.device) -> str:
    """``trainer.autocast`` as a step runs it: ``none`` and ``bf16`` as given; ``auto``: ``bf16`` on a CPU
    with native bfloat16 arithmetic (faster there, and seeds agree with float32), else ``none`` (GPUs and
    other CPUs: not measured)."""
    if value not in AUTOCAST_CHOICES:
        raise ValueError(f"trainer.autocast={value!r}: use {', '.join(AUTOCAST_CHOICES)}")
    if value != "auto":
        return value
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "none"


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
