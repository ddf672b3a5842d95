"""Checkpoints: written atomically, read back with checks, and set aside (never deleted) when unreadable.

A checkpoint holds everything a run needs to continue exactly where it stopped (the learner's state:
weights, optimiser, data stream and random state; the histories; every launch) and the training settings
that must match for a relaunch to resume it (:data:`RESUME_MUST_MATCH`).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from stn_repro.io import publish_atomically
from stn_repro.training.settings import TrainSettings

CHECKPOINT_NAME = "checkpoint.pt"


CHECKPOINT_FORMAT = 2  # 2: one layout for single and stacked runs ({"learner": ..., "histories": ...})


# Below this much free space, a failed torch.save is taken for a full disk.
NEARLY_FULL_BYTES = 256 << 20


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``: a crash never leaves half a checkpoint, and a
    full disk leaves the previous one as it was (an ``OSError`` with ``errno.ENOSPC`` naming the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        publish_atomically(tmp, path)
    except (
        RuntimeError
    ) as error:  # torch's writer reports a failed write (e.g. a full disk) as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        if "write" in str(error) and shutil.disk_usage(path.parent).free < NEARLY_FULL_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def check_settings(state: dict[str, Any], path: Path, settings: TrainSettings) -> None:
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


def check_checkpoint(state: dict[str, Any], path: Path, num_models: int) -> None:
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
