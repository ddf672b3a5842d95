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

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .loop import (
    AUTOCAST_DTYPES,
    CHECKPOINT_NAME,
    BatchStream,
    SpeedSettings,
    TrainResult,
    TrainSettings,
    check_loss,
    evaluate,
    localisation_parameters,
    save_checkpoint,
)


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


def train_stacked(
    models: Sequence[nn.Module],
    streams: Sequence[BatchStream],
    eval_sets: dict[str, tuple[Tensor, Tensor]],
    settings: TrainSettings,
    run_dir: Path,
    *,
    batch_size: int,
    speed: SpeedSettings | None = None,
    log: Callable[[str], None] = print,
) -> list[TrainResult]:
    """Train ``models[i]`` on ``streams[i]`` for every ``i`` at once, as :func:`~stn_repro.training.loop.train`
    would train each alone, and return one :class:`TrainResult` per model.

    Every model is evaluated on the same ``eval_sets`` (``name -> (images, labels)`` on the models'
    device). One checkpoint in ``run_dir`` holds the stacked parameters, the optimiser, every stream and the
    RNG state; a relaunch resumes from it exactly. A NaN, infinite or exploded loss of any model stops the
    run with :class:`TrainingDiverged`, naming the model. At the end (and at every evaluation) the trained
    values are written back into ``models``. ``speed``: ``autocast`` is supported; ``channels_last`` and
    ``compile`` are not (they raise ``ValueError``): vmap picks its own batched kernels.
    """
    speed = speed or SpeedSettings()
    if speed.channels_last or speed.compile:
        raise ValueError(
            "the stacked engine supports the autocast speed setting only (not channels_last/compile)"
        )
    if len(models) != len(streams):
        raise ValueError(f"{len(models)} models but {len(streams)} streams: each model needs its own stream")
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    stacked = StackedModels(models)
    optimizer = make_stacked_optimizer(stacked, settings)
    device = next(iter(stacked.params.values())).device
    start, wall_before = 0, 0.0
    histories: list[list[dict[str, Any]]] = [[] for _ in models]
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["num_models"] != len(models):
            raise ValueError(
                f"{checkpoint_path} holds {state['num_models']} stacked models, not {len(models)}"
            )
        stacked.load_state_dict(state["stacked"])
        optimizer.load_state_dict(state["optimizer"])
        for stream, stream_state in zip(streams, state["streams"], strict=True):
            stream.load_state_dict(stream_state)
        torch.set_rng_state(state["torch_rng"])
        start, wall_before, histories = state["iteration"], state["wall_time_s"], state["histories"]
        log(f"resuming {len(models)} stacked models from {checkpoint_path} at iteration {start:,}")

    def checkpoint(iteration: int, wall: float) -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "num_models": len(models),
                "stacked": stacked.state_dict(),
                "optimizer": optimizer.state_dict(),
                "streams": [stream.state_dict() for stream in streams],
                "torch_rng": torch.get_rng_state(),
                "iteration": iteration,
                "wall_time_s": wall,
                "histories": histories,
                "settings": asdict(settings),
                "speed": asdict(speed),
            },
        )

    def run_evaluation(iteration: int) -> list[dict[str, float]]:
        stacked.copy_into(models)
        all_errors = []
        for index, model in enumerate(models):
            errors = {
                name: evaluate(model, x, y, settings.eval_batch_size) for name, (x, y) in eval_sets.items()
            }
            histories[index].append({"iteration": iteration, **{f"{k}_error": v for k, v in errors.items()}})
            log(
                f"eval  iter {iteration:>7,} | model {index} | "
                + " | ".join(f"{k} error {v:.2f}%" for k, v in errors.items())
            )
            all_errors.append(errors)
        return all_errors

    dtype = AUTOCAST_DTYPES[speed.autocast]
    autocast = (
        (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    )
    end = (
        settings.iterations
        if settings.stop_after is None
        else min(settings.iterations, start + settings.stop_after)
    )
    t0 = time.perf_counter()
    window_start, window_images = t0, 0
    errors: list[dict[str, float]] = [{} for _ in models]
    iteration = start
    try:
        while iteration < end:
            lr = settings.lr_at(iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            batches = [stream.next_batch() for stream in streams]
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            with autocast():
                losses = stacked.losses(x, y)
            loss_values = losses.tolist()
            for index, value in enumerate(loss_values):
                check_loss(value, iteration, settings, checkpoint_path, who=f"model {index}'s ")
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # slice i of each stacked gradient is model i's own gradient
            optimizer.step()
            iteration += 1
            window_images += batch_size * len(models)

            if iteration % settings.log_every == 0 or iteration == end:
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                shown = " ".join(f"{v:.4f}" for v in loss_values)
                log(
                    f"train iter {iteration:>7,}/{settings.iterations:,} | losses {shown} | lr {lr:.1e} | "
                    f"{rate:,.0f} img/s"
                )
                window_start, window_images = now, 0
            if (
                settings.eval_every
                and iteration % settings.eval_every == 0
                and iteration < settings.iterations
            ):
                errors = run_evaluation(iteration)
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
    else:
        stacked.copy_into(models)
    wall = wall_before + time.perf_counter() - t0
    checkpoint(iteration, wall)
    return [
        TrainResult(
            iterations=iteration, finished=finished, errors=errors[i], wall_time_s=wall, history=histories[i]
        )
        for i in range(len(models))
    ]
