"""MNIST addition (Table 4) from the command line.

python -m experiments.addition experiment=addition/2x_st_fcn_tps seed=2
python -m experiments.addition -m model=addition_st_fcn,addition_2x_st_fcn transformer=affine,projective,tps seed=1,2,3
python -m experiments.addition model=addition_fcn profile=quick   # plain models ignore the transformer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.common import refuse_stacked_seeds, seed_spec_fields, seed_tracker, train_settings
from experiments.jobs import job, run_entry_point
from stn_repro.tasks.addition import SET_NAME, AdditionSpec, run_addition_seed
from stn_repro.training.settings import TrainSettings

NOT_OPTIONS = ("name", "kind", "transform")  # model keys that are not build_addition_model options


@hydra.main(version_base="1.3", config_path="../configs", config_name="addition")
def main(cfg: DictConfig) -> float | None:
    return job(cfg, run)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    spec, settings = spec_from_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    return run_addition_seed(
        spec,
        settings,
        run_dir,
        config=config,
        make_tracker=seed_tracker(
            cfg, spec, ["addition", spec.model, spec.transform or "none", spec.profile], config, run_dir
        ),
    )


def spec_from_config(cfg: DictConfig) -> tuple[AdditionSpec, TrainSettings]:
    """Translate the composed config into the library's explicit arguments."""
    if cfg.data.name != SET_NAME:
        raise ValueError(
            f"data={cfg.data.name} is not the MNIST addition set: use data=addition (the distorted-MNIST "
            "sets run with python -m experiments.mnist)"
        )
    if "transform" not in cfg.model:
        raise ValueError(
            f"model={cfg.model.name} is not an MNIST addition model: use model=addition_fcn, addition_cnn, "
            "addition_st_fcn or addition_2x_st_fcn"
        )
    refuse_stacked_seeds(cfg)
    options = {
        key: (list(value) if OmegaConf.is_list(value) else value)
        for key, value in cfg.model.items()
        if key not in NOT_OPTIONS and value is not None
    }
    spec = AdditionSpec(
        model=cfg.model.kind,
        transform=cfg.model.transform,
        data_source=cfg.data.source,
        hold_out_validation=cfg.data.hold_out_validation,
        pool_after_transformer=cfg.data.pool_after_transformer,
        model_options=options,
        **seed_spec_fields(cfg),
    )
    return spec, train_settings(cfg)


if __name__ == "__main__":
    run_entry_point(main)
