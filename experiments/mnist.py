"""Distorted MNIST (Table 1 and TC) from the command line.

python -m experiments.mnist experiment=rts_st_cnn_tps seed=2
python -m experiments.mnist -m data=rts model=st_cnn transformer=affine,tps seed=1,2,3
python -m experiments.mnist experiment=rts_st_cnn_affine seeds=[1,2,3]   # three seeds stacked (GPU)
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from stn_repro.data import DataError
from stn_repro.tasks.mnist import (
    CellSpec,
    check_seeds,
    run_cell,
    run_cells_stacked,
)
from stn_repro.tracking import Tracker, WandbTracker
from stn_repro.training.loop import SpeedSettings, TrainSettings
from stn_repro.training.stacked import check_stackable

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


def run_folder(seed: int, seeds: Any) -> str:
    """The run's folder inside its cell's: ``seed<k>`` for one seed, ``seeds<a>-<b>-<c>`` for stacked ones.

    Registered as the ``stn_run_folder`` resolver that configs/hydra/default.yaml names the run dirs with.
    """
    stacked = seeds_from_config(seeds)
    return f"seed{seed}" if stacked is None else "seeds" + "-".join(map(str, stacked))


# At import, before Hydra resolves hydra.run.dir (also in the joblib launcher's workers, which import this).
OmegaConf.register_new_resolver("stn_run_folder", run_folder, replace=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="mnist")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except DataError as error:
        # A missing or corrupt data file is for the user to fix, not a bug: what and how, without a traceback.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def run(cfg: DictConfig) -> float | None:
    """One job: a single-seed cell, or the stacked seeds of one (``seeds=[...]``); returns its test error."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    seeds = seeds_from_config(cfg.seeds)
    spec, settings = cell_from_config(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    config = OmegaConf.to_container(cfg, resolve=True)
    if seeds is not None:
        check_stacked_config(cfg, HydraConfig.get().overrides.task)
        # The seed folders are the stacked folder's siblings, named as the single-seed runner names its
        # run folder, so both runners write (and skip) the same seed<k>/record.json.
        seed_dirs = [run_dir.parent / run_folder(seed, None) for seed in seeds]
        records = run_cells_stacked(
            spec,
            seeds,
            settings,
            run_dir,
            seed_dirs,
            configs={seed: {**config, "seed": seed} for seed in seeds},
            make_tracker=lambda seed_spec, seed_dir: make_tracker(
                cfg, seed_spec, {**config, "seed": seed_spec.seed}, seed_dir, reinit="create_new"
            ),
        )
        errors = [r["test_error"] for r in records.values() if r.get("finished")]
        return statistics.fmean(errors) if errors else None
    record = run_cell(
        spec, settings, run_dir, config=config, make_tracker=lambda: make_tracker(cfg, spec, config, run_dir)
    )
    return record.get("test_error")


def check_stacked_config(cfg: DictConfig, task_overrides: list[str]) -> None:
    """Refuse what the stacked engine cannot do before any data loads, naming the config keys that fix it."""
    try:
        check_stackable(cell_from_config(cfg)[0].speed)
    except ValueError:
        raise ValueError(
            "stacked seeds (seeds=[...]) support the trainer.autocast speed setting only: add "
            "trainer.channels_last=false trainer.compile=false, or train one seed per process (seed=<k>)"
        ) from None
    if any(override.lstrip("+~").split("=")[0] == "seed" for override in task_overrides):
        raise ValueError(
            "give seed=<k> (one seed per process) or seeds=[...] (stacked seeds), not both: "
            "with seeds set, seed is ignored"
        )


def make_tracker(
    cfg: DictConfig, spec: CellSpec, config: dict[str, Any], run_dir: Path, reinit: str = "finish_previous"
) -> Tracker:
    """The W&B run of one seed (one per seed, stacked or not), or a do-nothing tracker with logger=none."""
    if not cfg.logger.enabled:
        return Tracker()
    return WandbTracker(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=f"{spec.cell}-seed{spec.seed}-{spec.profile}",
        group=cfg.logger.group,
        config=config,
        dir=run_dir,
        mode=cfg.logger.mode,
        tags=[spec.data, spec.model, spec.transform or "none", spec.profile],
        reinit=reinit,
    )


def cell_from_config(cfg: DictConfig) -> tuple[CellSpec, TrainSettings]:
    """Translate the composed config into the library's explicit arguments."""
    model_options = {
        k: (list(v) if OmegaConf.is_list(v) else v)
        for k, v in cfg.model.items()
        if k not in ("name", "kind") and v is not None
    }
    transform = None if cfg.transformer.name == "none" else cfg.transformer.name
    spec = CellSpec(
        data=cfg.data.name,
        model=cfg.model.kind,
        transform=transform,
        seed=cfg.seed,
        batch_size=cfg.trainer.batch_size,
        profile=cfg.trainer.profile,
        reduced_budget=cfg.trainer.reduced_budget,
        device=cfg.trainer.device,
        data_source=cfg.data.source,
        data_dir=None if cfg.paths.data_dir is None else Path(cfg.paths.data_dir),
        train_mode=cfg.data.train_mode,
        hold_out_validation=cfg.data.hold_out_validation,
        pool_after_transformer=cfg.data.pool_after_transformer,
        model_options=model_options,
        speed=SpeedSettings(
            channels_last=cfg.trainer.channels_last,
            autocast=cfg.trainer.autocast,
            compile=cfg.trainer.compile,
            compile_mode=cfg.trainer.compile_mode,
        ),
    )
    iterations = cfg.trainer.iterations
    settings = TrainSettings(
        iterations=iterations,
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        lr_step_every=cfg.optim.lr_step_every or max(1, iterations // 3),
        lr_gamma=cfg.optim.lr_gamma,
        localisation_lr_multiplier=cfg.optim.localisation_lr_multiplier,
        log_every=cfg.trainer.log_every,
        eval_every=cfg.trainer.eval_every,
        checkpoint_every=cfg.trainer.checkpoint_every,
        picture_every=cfg.trainer.picture_every,
        max_loss=cfg.trainer.max_loss,
        stop_after=cfg.trainer.stop_after,
    )
    return spec, settings


if __name__ == "__main__":
    main()
