"""Distorted MNIST (Table 1 and TC) from the command line.

python -m experiments.mnist experiment=rts_st_cnn_tps seed=2
python -m experiments.mnist -m data=rts model=st_cnn transformer=affine,tps seed=1,2,3
python -m experiments.mnist experiment=rts_st_cnn_affine seeds=[1,2,3]   # three seeds stacked (GPU)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.common import (
    positive_int,
    run_folder,
    seed_spec_fields,
    seed_tracker,
    seeds_from_config,
    train_settings,
)
from experiments.jobs import job, run_entry_point
from stn_repro.models.mnist import width_range_budget as solve_width_range_budget
from stn_repro.tasks.mnist import MnistSpec, run_mnist_seed, run_mnist_seeds_stacked
from stn_repro.training.settings import TrainSettings
from stn_repro.training.stacked import check_stackable

__all__ = ["cell_from_config", "check_stacked_config", "main", "run", "run_folder", "seeds_from_config"]


def width_range_budget(image_size: Any, pool_after_transformer: Any) -> int:
    """configs/budget/width_ranges.yaml's budget for a data set (``stn_width_range_budget`` resolver)."""
    return solve_width_range_budget(
        positive_int(image_size, "data.image_size"), bool(pool_after_transformer)
    ).params


OmegaConf.register_new_resolver("stn_width_range_budget", width_range_budget, replace=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="mnist")
def main(cfg: DictConfig) -> float | None:
    return job(cfg, run)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | list[dict[str, Any]]:
    """One job: a single-seed cell, or the stacked seeds of one (``seeds=[...]``); returns the record(s)."""
    seeds = seeds_from_config(cfg.seeds)
    spec, settings = cell_from_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    if seeds is not None:
        check_stacked_config(cfg, HydraConfig.get().overrides.task)
        # The seed folders are the stacked folder's siblings, named as the single-seed runner names its
        # run folder, so both runners write (and skip) the same seed<k>/record.json.
        seed_dirs = [run_dir.parent / run_folder(seed, None) for seed in seeds]
        records = run_mnist_seeds_stacked(
            spec,
            seeds,
            settings,
            run_dir,
            seed_dirs,
            configs={seed: {**config, "seed": seed} for seed in seeds},
            make_tracker=lambda seed_spec, seed_dir: mnist_tracker(
                cfg, seed_spec, {**config, "seed": seed_spec.seed}, seed_dir, reinit="create_new"
            ),
        )
        return list(records.values())
    return run_mnist_seed(
        spec, settings, run_dir, config=config, make_tracker=lambda: mnist_tracker(cfg, spec, config, run_dir)
    )


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


def mnist_tracker(
    cfg: DictConfig, spec: MnistSpec, config: dict[str, Any], run_dir: Path, reinit: str = "finish_previous"
):
    """The W&B run of one seed (one per seed, stacked or not)."""
    tags = [spec.data, spec.model, spec.transform or "none", spec.profile]
    return seed_tracker(cfg, spec, tags, config, run_dir, reinit)()


def cell_from_config(cfg: DictConfig) -> tuple[MnistSpec, TrainSettings]:
    """Translate the composed config into the library's explicit arguments."""
    model_options = {
        k: (list(v) if OmegaConf.is_list(v) else v)
        for k, v in cfg.model.items()
        if k not in ("name", "kind") and v is not None
    }
    if "param_budget" in model_options:
        positive_int(model_options["param_budget"], "model.param_budget")
    transform = None if cfg.transformer.name == "none" else cfg.transformer.name
    spec = MnistSpec(
        data=cfg.data.name,
        model=cfg.model.kind,
        transform=transform,
        data_source=cfg.data.source,
        train_mode=cfg.data.train_mode,
        hold_out_validation=cfg.data.hold_out_validation,
        pool_after_transformer=cfg.data.pool_after_transformer,
        model_options=model_options,
        budget_reading=OmegaConf.select(cfg, "budget.name", default="about_400k"),
        **seed_spec_fields(cfg),
    )
    settings = train_settings(cfg)
    return spec, settings


if __name__ == "__main__":
    run_entry_point(main)
