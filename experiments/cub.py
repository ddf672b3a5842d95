"""CUB-200-2011 (Table 3) from the command line.

python -m experiments.cub experiment=cub/2x_st_cnn_448px seed=2
python -m experiments.cub -m data=cub224 model=cub_cnn,cub_st_cnn_2x
python -m experiments.cub data=synthetic_cub224 model=cub_st_cnn_2x profile=quick   # CPU, synthetic
torchrun --standalone --nproc_per_node=8 -m experiments.cub experiment=cub/4x_st_cnn_448px  # data parallel
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.common import (
    positive_int,
    refuse_stacked_seeds,
    seed_spec_fields,
    seed_tracker,
    train_settings,
)
from experiments.jobs import job, run_entry_point
from stn_repro.tasks.cub import CubSpec, run_cub_seed
from stn_repro.training.data_parallel import init_distributed, leave_distributed
from stn_repro.training.settings import TrainSettings

CUB_DATA_KEYS = ("size", "resize", "synthetic")


@hydra.main(version_base="1.3", config_path="../configs", config_name="cub")
def main(cfg: DictConfig) -> float | None:
    return job(cfg, run)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    spec, settings = spec_from_config(cfg)
    spec = replace(spec, weights=initial_weights(cfg, spec, run_dir))
    context = init_distributed(spec.device)  # None unless started by torchrun (or as several SLURM tasks)
    config = OmegaConf.to_container(cfg, resolve=True)
    tags = [spec.data, spec.model_name, spec.profile, *(["synthetic"] if spec.synthetic else [])]
    return run_cub_seed(
        spec,
        settings,
        run_dir,
        config=config,
        make_tracker=seed_tracker(cfg, spec, tags, config, run_dir),
        dist_context=context,
    )


def spec_from_config(cfg: DictConfig) -> tuple[CubSpec, TrainSettings]:
    """Translate the composed config into the library's explicit arguments."""
    if any(key not in cfg.data for key in CUB_DATA_KEYS):
        raise ValueError(
            f"data={cfg.data.name} is not a CUB set: use data=cub224, cub448, synthetic_cub224 or "
            "synthetic_cub448"
        )
    refuse_stacked_seeds(cfg)
    tiling = cfg.model.get("tiling")
    spec = CubSpec(
        data=cfg.data.name,
        size=cfg.data.size,
        resize=cfg.data.resize,
        model=cfg.model.kind,
        num_parts=cfg.model.num_parts,
        synthetic=cfg.data.synthetic,
        part_size=positive_int(cfg.trainer.part_size, "trainer.part_size"),
        backbone=cfg.model.backbone,
        width=cfg.model.width,
        dropout=cfg.model.dropout,
        weights=cfg.model.weights,
        input_convention=cfg.model.input_convention,
        tiling=None if tiling is None else OmegaConf.to_container(tiling),
        loc_channels=cfg.model.get("loc_channels", 128),
        loc_hidden=cfg.model.get("loc_hidden", 128),
        workers=cfg.trainer.workers,
        eval_batch_size=positive_int(cfg.trainer.eval_batch_size, "trainer.eval_batch_size"),
        **seed_spec_fields(cfg),
    )
    settings = train_settings(cfg)
    length = positive_int(cfg.optim.schedule_iterations, "optim.schedule_iterations")
    milestones = tuple(
        round(positive_int(m, "optim.lr_milestones[]") * settings.iterations / length)
        for m in cfg.optim.lr_milestones
    )
    return spec, replace(settings, lr_milestones=milestones, eval_batch_size=spec.eval_batch_size)


def initial_weights(cfg: DictConfig, spec: CubSpec, run_dir: Path) -> str | None:
    """``model.weights``; or, when that is null under ``trainer.st_init=cnn`` (the CPU profile), an ST-CNN
    starts from the finished CNN run of the same profile, set family and seed at 224 px (the paper starts
    from ImageNet weights, which the project's machines do not have)."""
    init = cfg.trainer.get("st_init")
    if init not in (None, "cnn"):
        raise ValueError(f"trainer.st_init={init!r}: use cnn (start ST-CNNs from the CNN run) or null")
    if spec.weights is not None or spec.model != "st_cnn" or init is None:
        return spec.weights
    family = spec.data.removesuffix(str(spec.size))
    cnn = run_dir.parent.parent / f"{family}224-cnn" / run_dir.name / "model.pt"
    if not cnn.is_file():
        raise FileNotFoundError(
            f"{spec.cell} starts from the CNN of profile {spec.profile}, seed {spec.seed} (trainer.st_init=cnn), "
            f"and {cnn} does not exist; fix: run that CNN first (model=cub_cnn, the 224 px set of the same "
            "family, the same trainer and seed; make reproduce-cub does), or set trainer.st_init=null to start "
            "from scratch"
        )
    return str(cnn)


if __name__ == "__main__":
    run_entry_point(main)
    leave_distributed()  # after every job of a sweep; not reached when a job fails
