"""SVHN multi-digit (Table 2) from the command line.

python -m experiments.svhn experiment=svhn/64px_st_cnn_multi seed=2
python -m experiments.svhn -m data=svhn64,svhn128 model=svhn_cnn,st_cnn_single,st_cnn_multi seed=1,2,3
python -m experiments.svhn data=synthetic_svhn64 model=st_cnn_multi profile=quick   # CPU, synthetic
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.common import refuse_stacked_seeds, seed_spec_fields, seed_tracker, train_settings
from experiments.jobs import job, run_entry_point
from stn_repro.tasks.svhn import SvhnSpec, run_svhn_seed
from stn_repro.training.settings import TrainSettings

SVHN_DATA_KEYS = ("set_name", "size", "crop", "train_splits")


@hydra.main(version_base="1.3", config_path="../configs", config_name="svhn")
def main(cfg: DictConfig) -> float | None:
    return job(cfg, run)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    spec, settings = spec_from_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker_tags = [spec.data, spec.model, spec.profile, *(["synthetic"] if spec.synthetic else [])]
    return run_svhn_seed(
        spec,
        settings,
        run_dir,
        config=config,
        make_tracker=seed_tracker(cfg, spec, tracker_tags, config, run_dir),
    )


def spec_from_config(cfg: DictConfig) -> tuple[SvhnSpec, TrainSettings]:
    """Translate the composed config into the library's explicit arguments."""
    missing = [key for key in SVHN_DATA_KEYS if key not in cfg.data]
    if missing:
        raise ValueError(
            f"data={cfg.data.name} is not an SVHN set: use data=svhn64, svhn128, synthetic_svhn64 or "
            "synthetic_svhn128 (the distorted-MNIST sets run with python -m experiments.mnist)"
        )
    refuse_stacked_seeds(cfg)
    options = {key: cfg.model[key] for key in ("width", "fc_layers", "dropout")}
    spec = SvhnSpec(
        data=cfg.data.name,
        set_name=cfg.data.set_name,
        size=cfg.data.size,
        model=cfg.model.kind,
        synthetic=cfg.data.synthetic,
        crop=cfg.data.crop,
        train_splits=tuple(cfg.data.train_splits),
        evaluate_val=cfg.data.evaluate_val,
        model_options=options,
        **seed_spec_fields(cfg),
    )
    return spec, train_settings(cfg)


if __name__ == "__main__":
    run_entry_point(main)
