"""A finished run's trained model (``model.pt``): saved with what rebuilds it, read back with checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stn_repro.training.checkpoints import save_checkpoint

WEIGHTS_NAME = "model.pt"  # a finished seed's trained model, beside its record


WEIGHTS_FORMAT = 1


def save_weights(path: Path, model: nn.Module, cell: str, seed: int, rebuild: dict[str, Any]) -> None:
    """Write the trained ``model`` of a finished seed to ``path`` (atomically), with ``rebuild``: what
    rebuilds it (a :class:`~stn_repro.training.runs.PreparedRun`'s ``weights``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(
        path, {"format": WEIGHTS_FORMAT, "cell": cell, "seed": seed, **rebuild, "state_dict": state}
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
