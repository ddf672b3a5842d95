"""Several models of one architecture trained at once: the seeds of a cell as one stacked model.

The models' parameters are stacked along a new leading *model* dimension (``torch.func.stack_module_state``)
and one forward pass runs every model on its own batch (``torch.func.vmap`` over ``functional_call``). The
sum of the per-model losses is back-propagated: model ``i``'s parameters only touch loss ``i``, so each
slice of the stacked gradient is that model's own gradient. SGD with momentum (and weight decay) is
elementwise, so one optimiser over the stacked tensors updates every slice exactly as a separate optimiser
would. Each model reads its own batch stream (e.g. its own :class:`~stn_repro.data.DistortedStream` seed),
so every model sees the batches it would see trained alone; results differ from separate runs only by the
float rounding of the batched kernels (``vmap`` runs a convolution over all models as one grouped one).

**Convention**: a stacked batch is ``x [M, B, C, H, W]``, ``y [M, B]``: model ``m`` reads ``x[m], y[m]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from stn_repro.training.learners import BatchStream, evaluate, localisation_parameters
from stn_repro.training.loop import TrainResult, run_training
from stn_repro.training.settings import SpeedSettings, TrainSettings


class StackedModels:
    """``M`` models of one architecture as stacked parameters (leading dimension ``M``) and one skeleton.

    ``params`` / ``buffers`` map each parameter / buffer name of the architecture to a ``[M, ...]`` tensor
    (parameters are leaves that require grad). The given models are not touched until
    :meth:`copy_into` writes the stacked values back into them.
    """

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("need at least one model to stack")

        def shapes(model: nn.Module) -> dict[str, torch.Size]:
            return {name: t.shape for name, t in [*model.named_parameters(), *model.named_buffers()]}

        for index, model in enumerate(models[1:], start=1):
            if shapes(model) != shapes(models[0]):
                raise ValueError(
                    f"model {index} has another architecture than model 0; only equal ones stack"
                )
        self.num_models = len(models)
        self.params, self.buffers = stack_module_state(list(models))
        # A parameterless copy on the meta device: functional_call supplies every tensor, so the skeleton
        # only provides the forward code and costs no memory.
        self.skeleton = copy.deepcopy(models[0]).to("meta")
        loc_ids = {id(p) for p in localisation_parameters(models[0])}
        self.localisation_names = [n for n, p in models[0].named_parameters() if id(p) in loc_ids]

    def _one_model_loss(self, params: dict, buffers: dict, x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(self.skeleton, (params, buffers), (x,))
        return F.cross_entropy(logits.float(), y)  # the loss in float32 also under bf16 autocast

    def losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-model cross-entropy ``[M]`` of the stacked batch ``x [M, B, ...]``, ``y [M, B]``."""
        return vmap(self._one_model_loss)(self.params, self.buffers, x, y)

    @torch.no_grad()
    def copy_into(self, models: Sequence[nn.Module]) -> None:
        """Write the stacked values into ``models`` (the same number and architecture as stacked)."""
        if len(models) != self.num_models:
            raise ValueError(f"{len(models)} models given, {self.num_models} are stacked")
        stacked = {**self.params, **self.buffers}
        for index, model in enumerate(models):
            # Tensor by tensor, not load_state_dict: the stack also holds non-persistent buffers.
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.copy_(stacked[name][index])

    def state_dict(self) -> dict[str, Tensor]:
        return {name: value.detach().clone() for name, value in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in {**self.params, **self.buffers}.items():
            if state[name].shape != value.shape:
                raise ValueError(
                    f"{name}: the state has shape {tuple(state[name].shape)}, not {tuple(value.shape)}"
                )
            value.copy_(state[name])


def make_stacked_optimizer(stacked: StackedModels, settings: TrainSettings) -> torch.optim.SGD:
    """SGD over the stacked parameters, grouped as :func:`~stn_repro.training.loop.make_optimizer` groups
    one model's (the localisation nets get ``localisation_lr_multiplier``)."""
    loc = set(stacked.localisation_names)
    groups = [
        {"params": [p for n, p in stacked.params.items() if n not in loc], "lr_scale": 1.0},
        {
            "params": [p for n, p in stacked.params.items() if n in loc],
            "lr_scale": settings.localisation_lr_multiplier,
        },
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(
        groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


class StackedLearner:
    """The learner of :func:`train_stacked`: ``M`` stacked models, one optimiser, ``M`` streams."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        streams: Sequence[BatchStream],
        settings: TrainSettings,
        speed: SpeedSettings,
        batch_size: int,
    ):
        if len(models) != len(streams):
            raise ValueError(
                f"{len(models)} models but {len(streams)} streams: each model needs its own stream"
            )
        self.models, self.streams, self.speed = list(models), list(streams), speed
        self.stacked = StackedModels(models)
        self.optimizer = make_stacked_optimizer(self.stacked, settings)
        self.device = next(iter(self.stacked.params.values())).device
        self.num_models, self.images_per_step = len(models), batch_size * len(models)

    def step(self) -> Tensor:
        batches = [stream.next_batch() for stream in self.streams]
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        with self.speed.autocast_context(self.device.type):
            losses = self.stacked.losses(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # slice i of each stacked gradient is model i's own gradient
        self.optimizer.step()
        return losses.detach()

    def export(self) -> None:
        self.stacked.copy_into(self.models)

    def evaluate(
        self, eval_sets: dict[str, tuple[Tensor, Tensor]], batch_size: int
    ) -> list[dict[str, float]]:
        return [
            {name: evaluate(model, x, y, batch_size) for name, (x, y) in eval_sets.items()}
            for model in self.models
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "stacked": self.stacked.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "streams": [stream.state_dict() for stream in self.streams],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stacked.load_state_dict(state["stacked"])
        self.optimizer.load_state_dict(state["optimizer"])
        for stream, stream_state in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(stream_state)


def check_stackable(speed: SpeedSettings) -> None:
    """Raise ``ValueError`` for speed settings the stacked engine cannot run: of them it takes ``autocast``
    only (``vmap`` picks its own batched kernels, and ``torch.compile`` of the vmapped step fails)."""
    if speed.channels_last or speed.compile:
        raise ValueError(
            "the stacked engine supports the autocast speed setting only (not channels_last/compile)"
        )


def train_stacked(
    models: Sequence[nn.Module],
    streams: Sequence[BatchStream],
    eval_sets: dict[str, tuple[Tensor, Tensor]],
    settings: TrainSettings,
    run_dir: Path,
    *,
    batch_size: int,
    speed: SpeedSettings | None = None,
    trackers: Sequence[Any] | None = None,
    on_picture: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[TrainResult]:
    """Train ``models[i]`` on ``streams[i]`` for every ``i`` at once, as :func:`~stn_repro.training.loop.train`
    would train each alone, and return one :class:`TrainResult` per model.

    The bookkeeping is :func:`~stn_repro.training.loop.run_training`'s, as for one model: every model is
    evaluated on the same ``eval_sets`` (``name -> (images, labels)`` on the models' device); one checkpoint
    in ``run_dir`` holds the stacked parameters, the optimiser, every stream and the RNG state, and a
    relaunch resumes from it exactly; a NaN, infinite or exploded loss of any model stops the run with
    :class:`TrainingDiverged`, naming the model. ``trackers`` (one per model) get what ``train``'s tracker
    gets. Before every evaluation, every ``on_picture(iteration)`` call and at the end, the trained values
    are written back into ``models``. ``speed``: ``autocast`` is supported; ``channels_last`` and ``compile``
    are not (they raise ``ValueError``): vmap picks its own batched kernels.
    """
    speed = speed or SpeedSettings()
    check_stackable(speed)
    learner = StackedLearner(models, streams, settings, speed, batch_size)
    return run_training(
        learner,
        eval_sets,
        settings,
        run_dir,
        trackers=trackers,
        on_picture=on_picture,
        log=log,
        extra_state={"speed": asdict(speed)},
    )
