"""What every Hydra entry point shares: run folders, config -> settings, trackers, and how a job ends.

Each experiment's entry point (``experiments/mnist.py``, ``experiments/svhn.py``) translates its own config
groups into the library's explicit arguments and hands one function to :func:`job`; the rest is here.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from stn_repro.data import DataError
from stn_repro.runs import RunLocked, check_seeds
from stn_repro.tracking import Tracker, WandbTracker
from stn_repro.training.loop import CheckpointError, SpeedSettings, TrainingDiverged, TrainSettings

SEEDS_FIX = (
    "give a list of distinct positive integers, e.g. seeds=[1,2,3] (stacked in one process), "
    "or seeds=null with seed=<k> for one seed"
)
# Mistakes a user can make and fix (a value, a missing file, a busy folder): one line, no traceback.
# STN_TRACEBACK=1 shows the traceback anyway.
USER_ERRORS = (DataError, RunLocked, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError)


def seeds_from_config(value: Any) -> list[int] | None:
    """The ``seeds`` config value checked: ``None`` (the single run of ``seed``) or the seeds to stack."""
    if value is None:
        return None
    if not (OmegaConf.is_list(value) or isinstance(value, list | tuple)):
        raise ValueError(f"seeds={value!r} is not a list: {SEEDS_FIX}")
    try:
        return check_seeds(list(value))
    except ValueError as error:
        raise ValueError(f"{error}: {SEEDS_FIX}") from None


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise ValueError(f"seed={seed!r} is not a positive integer: give e.g. seed=1")
    return seed


def run_folder(seed: Any, seeds: Any) -> str:
    """The run's folder inside its cell's: ``seed<k>`` for one seed, ``seeds<a>-<b>-<c>`` for stacked ones.

    Registered as the ``stn_run_folder`` resolver that configs/hydra/default.yaml names the run dirs with.
    """
    stacked = seeds_from_config(seeds)
    return f"seed{check_seed(seed)}" if stacked is None else "seeds" + "-".join(map(str, stacked))


# At import, before Hydra resolves hydra.run.dir (also in the joblib launcher's workers, which import this).
OmegaConf.register_new_resolver("stn_run_folder", run_folder, replace=True)


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The ``trainer`` and ``optim`` groups as :class:`TrainSettings`, every number checked."""
    iterations = _positive_int(cfg.trainer.iterations, "trainer.iterations")
    for key in ("batch_size", "log_every"):
        _positive_int(cfg.trainer[key], f"trainer.{key}")
    for key in ("eval_every", "checkpoint_every", "picture_every"):
        _non_negative_int(cfg.trainer[key], f"trainer.{key}")
    lr = _positive_number(cfg.optim.lr, "optim.lr")
    for key in ("momentum", "weight_decay", "localisation_lr_multiplier"):
        _non_negative_number(cfg.optim[key], f"optim.{key}")
    if cfg.trainer.stop_after is not None:
        _positive_int(cfg.trainer.stop_after, "trainer.stop_after")
    step_every = cfg.optim.lr_step_every
    if step_every is not None:
        _positive_int(step_every, "optim.lr_step_every")
    return TrainSettings(
        iterations=iterations,
        lr=lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        lr_step_every=step_every or max(1, iterations // cfg.optim.get("lr_steps", 3)),
        lr_gamma=cfg.optim.lr_gamma,
        localisation_lr_multiplier=cfg.optim.localisation_lr_multiplier,
        log_every=cfg.trainer.log_every,
        eval_every=cfg.trainer.eval_every,
        checkpoint_every=cfg.trainer.checkpoint_every,
        picture_every=cfg.trainer.picture_every,
        max_loss=cfg.trainer.max_loss,
        stop_after=cfg.trainer.stop_after,
    )


def speed_settings(cfg: DictConfig) -> SpeedSettings:
    return SpeedSettings(
        channels_last=cfg.trainer.channels_last,
        autocast=cfg.trainer.autocast,
        compile=cfg.trainer.compile,
        compile_mode=cfg.trainer.compile_mode,
    )


def make_tracker(
    cfg: DictConfig,
    *,
    name: str,
    tags: list[str],
    config: dict[str, Any],
    run_dir: Path,
    reinit: str = "finish_previous",
) -> Tracker:
    """The W&B run of one seed (offline unless WANDB_MODE says otherwise), or a do-nothing tracker with
    ``logger=none``."""
    if not cfg.logger.enabled:
        return Tracker()
    return WandbTracker(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=name,
        group=cfg.logger.group,
        config=config,
        dir=run_dir,
        mode=cfg.logger.mode,
        tags=tags,
        reinit=reinit,
    )


def job(cfg: DictConfig, run: Callable[[DictConfig, Path], dict[str, Any] | list[dict[str, Any]]]) -> Any:
    """Run one Hydra job, ``run(cfg, run_dir) -> record(s)``, and end it the way a user can act on.

    - A user's mistake (:data:`USER_ERRORS`: a bad value, a missing or corrupt file, a diverged run) ends
      the process with one ``error:`` line and exit status 1.
    - A run folder owned by another live process: the same line, exit 1; inside a sweep (``-m``) the job
      is skipped with that line and the sweep goes on.
    - A run stopped by SIGINT or SIGTERM has checkpointed and said so; the process exits with the
      signal's conventional status (130, 143), without a traceback.
    Returns the test error (the value a Hydra sweeper would optimise) of a finished run, else ``None``.
    """
    try:
        if cfg.trainer.num_threads:
            torch.set_num_threads(_positive_int(cfg.trainer.num_threads, "trainer.num_threads"))
        outcome = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except RunLocked as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            print(f"skipped: {error}", file=sys.stderr)
            return None
        _fail(error)
    except USER_ERRORS as error:
        _fail(error)
    records = outcome if isinstance(outcome, list) else [outcome]
    stopped_by = next((r.get("stopped_by") for r in records if r.get("stopped_by")), None)
    if stopped_by:
        sys.exit(128 + signal.Signals[stopped_by].value)
    errors = [r["test_error"] for r in records if r.get("finished")]
    return sum(errors) / len(errors) if errors else None


def _fail(error: BaseException) -> None:
    if os.environ.get("STN_TRACEBACK"):
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} must be a positive whole number")
    return value


def _non_negative_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}={value!r} must be a whole number >= 0 (0 turns it off)")
    return value


def _positive_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key}={value!r} must be a number > 0")
    return float(value)


def _non_negative_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{key}={value!r} must be a number >= 0")
    return float(value)
