"""What every Hydra entry point shares on the way in: the composed config checked and turned into the
library's explicit arguments (seeds, :class:`TrainSettings`, speed settings, the fields of a seed's spec),
the run folder's name and the run's W&B tracker. How a job then runs and ends: :mod:`experiments.jobs`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stn_repro.tracking import Tracker, WandbTracker
from stn_repro.training.runs import check_seeds, resolve_device
from stn_repro.training.settings import LR_SCHEDULES, SpeedSettings, TrainSettings, resolve_autocast

SEEDS_FIX = (
    "give a list of distinct positive integers, e.g. seeds=[1,2,3] (stacked in one process), "
    "or seeds=null with seed=<k> for one seed"
)


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


def positive_int(value: Any, key: str) -> int:
    """``value`` if it is a whole number >= 1, else a ``ValueError`` naming ``key=value`` and the fix."""
    return _positive_int(value, key)


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
    warmup = _non_negative_int(cfg.optim.get("warmup_iterations", 0), "optim.warmup_iterations")
    schedule = cfg.optim.get("lr_schedule", "step")
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"optim.lr_schedule={schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
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
        lr_schedule=schedule,
        warmup_iterations=warmup,
        nesterov=bool(cfg.optim.get("nesterov", False)),
        progress_bar=progress_bar(cfg.trainer.get("progress_bar", "auto")),
    )


def progress_bar(value: Any) -> bool:
    """``trainer.progress_bar``: true, false, or ``auto``: a bar when the output goes to a terminal (not into
    a log file or a pipe, where the plain log lines alone are more useful)."""
    if value == "auto":
        return sys.stderr.isatty()
    if not isinstance(value, bool):
        raise ValueError(f"trainer.progress_bar={value!r}: use auto, true or false")
    return value


def speed_settings(cfg: DictConfig) -> SpeedSettings:
    return SpeedSettings(
        channels_last=channels_last(cfg),
        autocast=resolve_autocast(cfg.trainer.autocast, resolve_device(cfg.trainer.device)),
        compile=cfg.trainer.compile,
        compile_mode=cfg.trainer.compile_mode,
    )


def channels_last(cfg: DictConfig) -> bool:
    """``trainer.channels_last``: true, false, or ``cpu``: on where training runs on the CPU, one seed per
    process (measured faster there, `benchmarks/bench_peak.py --channels-last --versus row-major`; not
    measured on a GPU, and the stacked-seeds engine does not take it)."""
    value = cfg.trainer.channels_last
    if value == "cpu":
        stacked = seeds_from_config(cfg.get("seeds")) is not None
        return not stacked and resolve_device(cfg.trainer.device).type == "cpu"
    if not isinstance(value, bool):
        raise ValueError(f"trainer.channels_last={value!r}: use true, false or cpu")
    return value


def seed_spec_fields(cfg: DictConfig, *, speed: bool = True) -> dict[str, Any]:
    """The fields every experiment's spec of one seed takes from the same config keys: ``seed``,
    ``batch_size``, ``profile``, ``reduced_budget``, ``device``, ``data_dir`` and (``speed=True``) ``speed``."""
    fields = {
        "seed": check_seed(cfg.seed),
        "batch_size": positive_int(cfg.trainer.batch_size, "trainer.batch_size"),
        "profile": cfg.trainer.profile,
        "reduced_budget": cfg.trainer.reduced_budget,
        "device": cfg.trainer.device,
        "data_dir": data_dir(cfg),
    }
    if speed:
        fields["speed"] = speed_settings(cfg)
    return fields


def data_dir(cfg: DictConfig) -> Path | None:
    """``paths.data_dir`` as a path (``None``: the library's default, ``$STN_DATA`` or ``./data``)."""
    return None if cfg.paths.data_dir is None else Path(cfg.paths.data_dir)


def refuse_stacked_seeds(cfg: DictConfig) -> None:
    """Stacked seeds (``seeds=[...]``) are distorted MNIST's alone; every other runner trains one seed."""
    if cfg.seeds is not None:
        raise ValueError("seeds=[...] (stacked seeds) is for distorted MNIST only: give seed=<k>")


def seed_tracker(
    cfg: DictConfig,
    spec: Any,
    tags: list[str],
    config: dict[str, Any],
    run_dir: Path,
    reinit: str = "finish_previous",
) -> Callable[[], Tracker]:
    """The ``make_tracker`` of the run of ``spec`` (its ``cell``, ``seed`` and ``profile`` name the W&B run)."""
    name = f"{spec.cell}-seed{spec.seed}-{spec.profile}"
    return lambda: make_tracker(cfg, name=name, tags=tags, config=config, run_dir=run_dir, reinit=reinit)


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
