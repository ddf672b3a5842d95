"""Distorted MNIST (Table 1 and TC) from the command line.

python -m experiments.mnist experiment=rts_st_cnn_tps seed=2
python -m experiments.mnist -m data=rts model=st_cnn transformer=affine,tps seed=1,2,3
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from stn_repro.tasks.mnist import CellSpec, run_cell
from stn_repro.tracking import Tracker, WandbTracker
from stn_repro.training.loop import SpeedSettings, TrainSettings


@hydra.main(version_base="1.3", config_path="../configs", config_name="mnist")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    spec, settings = cell_from_config(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker()
    if cfg.logger.enabled:
        tracker = WandbTracker(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            name=f"{spec.cell}-seed{spec.seed}-{spec.profile}",
            group=cfg.logger.group,
            config=config,
            dir=run_dir,
            mode=cfg.logger.mode,
            tags=[spec.data, spec.model, spec.transform or "none", spec.profile],
        )
    try:
        record = run_cell(spec, settings, run_dir, config=config, tracker=tracker)
    finally:
        tracker.finish()
    return record.get("test_error")


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
