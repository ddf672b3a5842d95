"""Data-parallel training over several processes (``torchrun``, or SLURM tasks), and the learner of models
whose data come from a ``DataLoader`` (CUB-200-2011: too large to hold as tensors).

- :func:`init_distributed` starts the process group from ``torchrun``'s environment (``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) or from SLURM's (one task per GPU, e.g. the
  ``hydra/launcher=slurm`` submitit launcher), and returns a :class:`DistContext`; one process: ``None``.
  :func:`leave_distributed` leaves it once the entry point's work is done.
- :class:`LoaderLearner` is a :class:`~stn_repro.training.loop.Learner`: the model (wrapped in
  ``DistributedDataParallel`` when there are several processes), its SGD optimiser (the localisation lr
  group as every learner's) and a sharded stream (:class:`~stn_repro.data.cub.CubStream`); it evaluates
  on test-set loaders, each process scoring its share and the counts summed.

What makes several processes equal one (tested in tests/test_experiments_cub.py):

- The global batch is the per-process batch times the world size, and the union of the processes' k-th
  batches is one process's k-th batch of the global size (the stream's ``DistributedSampler`` order).
  DDP averages the gradients, so they equal one process's on the global batch wherever each image's loss
  does not depend on the others in its batch. Batch normalisation in training mode does: each process
  normalises with its own batch's statistics (as the usual multi-GPU BN-Inception training), and DDP
  broadcasts rank 0's running statistics at every forward pass.
- Every process computes the same losses (all-reduced), stops after the same step (a signal received by
  any of them is agreed on before each step), and evaluates the same weights (rank 0's BN statistics are
  broadcast first).
- Only rank 0 writes (checkpoint, weights, record, pictures, W&B); see ``run_seed(writer=...)`` and
  ``run_training(write=...)``. Each process's RNG state (dropout) is in the checkpoint, so a resumed run
  continues as the uninterrupted one would; it must resume with the same number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from stn_repro.training.learners import TrainStep, make_optimizer
from stn_repro.training.objectives import Objective
from stn_repro.training.settings import SpeedSettings, TrainSettings

from .objectives import CLASSIFICATION

STOP_SIGNALS = (None, "SIGINT", "SIGTERM")  # agreed on as the largest code any process holds


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints, weights, records, pictures and W&B; the others write nothing."""
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device this process trains on: its own GPU (``cuda:<local rank>``) under NCCL."""
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else requested


def distributed_environment() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's or SLURM's environment, or ``None`` for one
    process. Under SLURM (``SLURM_NTASKS`` > 1) ``MASTER_ADDR`` defaults to the job's first host and
    ``MASTER_PORT`` to a port derived from the job id."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = _first_slurm_host()
        env.setdefault("MASTER_PORT", str(20_000 + int(env.get("SLURM_JOB_ID", "0")) % 20_000))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return None


def _first_slurm_host() -> str:
    try:
        import submitit

        return submitit.JobEnvironment().hostnames[0]
    except Exception:  # no submitit, or not inside a submitit job: SLURM's own variable
        return os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")


def init_distributed(device: str = "auto") -> DistContext | None:
    """Join the process group of a data-parallel run (NCCL on GPUs, gloo on CPUs) and return this process's
    :class:`DistContext`; ``None`` when there is one process. Joining twice reuses the group."""
    found = distributed_environment()
    if found is None:
        return None
    rank, world_size, local_rank = found
    cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, dist.get_backend())


def leave_distributed() -> None:
    """Leave the process group, if this process joined one; call it once the work is done.

    Left to interpreter shutdown, gloo's worker threads are destroyed while still joinable and a process can
    abort (SIGABRT, "terminate called without an active exception") after finishing its work. Only on a
    normal exit: a process that failed mid-collective would wait here for the others."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


class LoaderLearner:
    """The :class:`~stn_repro.training.loop.Learner` of one model trained from a ``DataLoader``-backed
    stream, in one process or data-parallel over several (``dist``).

    ``stream`` yields this process's batches (``batch_size`` per process, see the module docstring) and has
    ``state_dict``/``load_state_dict``; ``eval_loaders`` map a set's name to this process's share of it
    (images in ``[0, 1]``, labels). :meth:`evaluate` returns the % the model gets wrong over the whole set.
    The state holds every process's RNG state (the checkpoint's own ``torch_rng`` is rank 0's).
    """

    num_models = 1

    def __init__(
        self,
        model: nn.Module,
        stream: Any,
        settings: TrainSettings,
        speed: SpeedSettings,
        *,
        eval_loaders: Mapping[str, DataLoader],
        dist_context: DistContext | None = None,
        objective: Objective = CLASSIFICATION,
    ):
        self.model, self.stream, self.dist, self.objective = model, stream, dist_context, objective
        self.eval_loaders = dict(eval_loaders)
        self.device = next(model.parameters()).device
        self.world_size = dist_context.world_size if dist_context else 1
        self.images_per_step = stream.batch_size * self.world_size
        if speed.channels_last:  # before DDP registers its gradient buckets
            model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(model, settings)
        trained: nn.Module = model
        if dist_context is not None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            trained = DistributedDataParallel(model, device_ids=ids)  # rank 0's buffers at every forward
        self.trained = trained
        self.train_step = TrainStep(trained, self.optimizer, speed, objective)
        self._pending_rng: dict[str, Tensor] | None = None

    def step(self) -> Tensor:
        if self._pending_rng is not None:  # a resumed run: this process's own RNG state
            torch.set_rng_state(self._pending_rng["cpu"])
            if "cuda" in self._pending_rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._pending_rng["cuda"], self.device)
            self._pending_rng = None
        self.model.train()
        images, labels = self.stream.next_batch()
        loss = self.train_step.loss(images, labels)
        self.train_step.update(loss)
        loss = loss.detach().reshape(1)
        if self.dist is not None:  # every process sees the same (mean) loss and checks it the same way
            loss = loss.clone()
            dist.all_reduce(loss)
            loss /= self.world_size
        return loss

    def agree_to_stop(self, received: str | None) -> str | None:
        if self.dist is None:
            return received
        code = torch.tensor([STOP_SIGNALS.index(received)], device=self._comm_device())
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return STOP_SIGNALS[int(code.item())]

    def export(self) -> None:
        pass  # the model is trained in place

    def _comm_device(self) -> torch.device:
        return self.device if self.dist is not None and self.dist.backend == "nccl" else torch.device("cpu")

    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers (BN running statistics) on every process: all score the model rank 0 saves."""
        if self.dist is None:
            return
        with torch.no_grad():
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    @torch.no_grad()
    def evaluate(
        self, eval_sets: Mapping[str, tuple[Tensor, Tensor]], batch_size: int
    ) -> list[dict[str, float]]:
        """% wrong on each of ``eval_loaders`` (``eval_sets`` and ``batch_size`` are the loaders' own)."""
        self._broadcast_buffers()
        was_training = self.model.training
        self.model.eval()
        errors = {}
        for name, loader in self.eval_loaders.items():
            counts = torch.zeros(2, dtype=torch.float64, device=self.device)
            for images, labels in loader:
                images = images.to(self.device, non_blocking=True)
                if images.dtype == torch.uint8:
                    images = images.float().div_(255.0)
                labels = labels.to(self.device, non_blocking=True)
                counts[0] += self.objective.wrong(self.model(images), labels).sum()
                counts[1] += labels.shape[0]
            if self.dist is not None:
                counts = counts.to(self._comm_device())
                dist.all_reduce(counts)
            wrong, total = counts.tolist()
            errors[name] = 100.0 * wrong / max(total, 1.0)
        self.model.train(was_training)
        return [errors]

    def state_dict(self) -> dict[str, Any]:
        rng = _rng_state(self.device)
        if self.dist is not None:
            every: list[Any] = [None] * self.world_size
            dist.all_gather_object(every, rng)
        else:
            every = [rng]
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stream": self.stream.state_dict(),
            "world_size": self.world_size,
            "rng": every,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("world_size", 1) != self.world_size:
            raise ValueError(
                f"the checkpoint was made by {state.get('world_size', 1)} processes, this run has "
                f"{self.world_size}: relaunch with NPROC={state.get('world_size', 1)} to resume it (or delete "
                "the checkpoint to start afresh)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])
        rank = self.dist.rank if self.dist is not None else 0
        self._pending_rng = {k: v.cpu() for k, v in state["rng"][rank].items()}
