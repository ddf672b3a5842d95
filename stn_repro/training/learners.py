"""Learners: what the training loop drives. A learner holds the model(s), their optimiser and batch
stream(s) behind one ``step()`` (:class:`Learner`); :class:`SingleModel` is the plain one (one model, one
stream, one :class:`TrainStep`). Also the optimiser with its localisation-net group and the evaluation
of a model's errors on a stored set.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from stn_repro.training.objectives import Objective
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.transformers.module import localisation_spread

from .objectives import CLASSIFICATION


class BatchStream(Protocol):
    def next_batch(self) -> tuple[Tensor, Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


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
        self.device_type = device_of(model).type
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
        self.device = device_of(model)
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


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
