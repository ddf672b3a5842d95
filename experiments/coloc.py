"""Co-localisation (Table 5) from the command line.

python -m experiments.coloc data=coloc_t digit=3
python -m experiments.coloc -m digit=0,1,2,3,4,5,6,7,8,9 data=coloc_t,coloc_tc profile=quick
python -m experiments.coloc data.source=synthetic profile=smoke logger=none   # no real MNIST needed

e() is a finished Table 1 CNN run (embedding=table1, configs/embedding/table1.yaml). With embedding=plain the
first job that needs it trains it in runs/coloc/embedding/<profile>/<source>/seed<k>/ and every later job
reuses it (a job started while another trains it waits for it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.common import (
    check_seed,
    data_dir,
    refuse_stacked_seeds,
    seed_spec_fields,
    seed_tracker,
    speed_settings,
    train_settings,
)
from experiments.jobs import job, run_entry_point
from stn_repro.io import atomic_write_text
from stn_repro.tasks.coloc.embedding import EmbeddingSpec
from stn_repro.tasks.coloc.learner import NEGATIVES, negatives_label
from stn_repro.tasks.coloc.task import ColocSpec, run_coloc_seed
from stn_repro.training.run_folder import read_finished_record
from stn_repro.training.settings import TrainSettings

EMBEDDING_TRAINER_KEYS = (
    "iterations",
    "batch_size",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "picture_every",
)


def coloc_cell(
    data: str,
    source: str,
    digit: Any,
    negatives: str = "crop",
    window_from: Any = None,
    oracle_steps: Any = 0,
) -> str:
    """The run's cell name, ``<data>[-synthetic][-<negatives>]-digit<k>`` (the ``stn_coloc_cell`` resolver of
    configs/coloc.yaml): as :attr:`ColocSpec.cell`, so runs with other negatives (and, for
    ``crop_then_window``, another switch step) get folders of their own."""
    label = negatives_label(negatives, window_from) if negatives in NEGATIVES else negatives
    return ColocSpec.cell_name(data, source == "synthetic", digit, label, oracle_steps or 0)


OmegaConf.register_new_resolver("stn_coloc_cell", coloc_cell, replace=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="coloc")
def main(cfg: DictConfig) -> float | None:
    return job(cfg, run)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    spec, settings, embedding_spec, embedding_settings, embedding_dir = specs_from_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    tags = [spec.data, f"digit{spec.digit}", spec.profile, *(["synthetic"] if spec.synthetic else [])]
    if embedding_spec is not None:
        leave_launch_overrides(run_dir, embedding_dir)
    return run_coloc_seed(
        spec,
        settings,
        run_dir,
        embedding_spec=embedding_spec,
        embedding_settings=embedding_settings,
        embedding_dir=embedding_dir,
        config=config,
        make_tracker=seed_tracker(cfg, spec, tags, config, run_dir),
        make_embedding_tracker=None
        if embedding_spec is None
        else seed_tracker(cfg, embedding_spec, ["embedding", spec.profile], config, embedding_dir),
    )


def leave_launch_overrides(run_dir: Path, embedding_dir: Path) -> None:
    """Copy this job's Hydra overrides into the embedding's folder, unless it has some already or the
    embedding is finished (nothing to resume, and a committed one, ``embedding.run_dir=results/records/...``,
    stays as committed).

    The embedding run has no Hydra job of its own: a co-localisation job trains it first. With the
    overrides beside its checkpoint, ``make park`` can give the command that resumes an unfinished one
    (relaunching that job trains the rest of the embedding, then the co-localisation run).
    """
    source = Path(run_dir) / ".hydra" / "overrides.yaml"
    target = Path(embedding_dir) / ".hydra" / "overrides.yaml"
    if source.is_file() and not target.exists() and read_finished_record(Path(embedding_dir)) is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, source.read_text())


def specs_from_config(
    cfg: DictConfig,
) -> tuple[ColocSpec, TrainSettings, EmbeddingSpec | None, TrainSettings | None, Path]:
    """Translate the composed config into the library's explicit arguments: the co-localisation run's spec
    and settings, the embedding run's (None for embedding=table1: a finished run, nothing to train), and the
    embedding's folder."""
    if "source" not in cfg.data or cfg.data.name not in ("coloc_t", "coloc_tc"):
        raise ValueError(
            f"data={cfg.data.name} is not a co-localisation set: use data=coloc_t or data=coloc_tc "
            "(the other sets run with python -m experiments.mnist / experiments.svhn)"
        )
    refuse_stacked_seeds(cfg)
    spec = ColocSpec(
        data=cfg.data.name,
        digit=cfg.digit,
        num_images=cfg.coloc.num_images,
        image_offset=cfg.coloc.image_offset,
        oracle_steps=cfg.coloc.oracle_steps,
        extra_starts=tuple(tuple(float(v) for v in start) for start in cfg.coloc.extra_starts),
        start_steps=cfg.coloc.start_steps,
        init_scale=float(cfg.coloc.init_scale),
        init_translation=tuple(float(t) for t in cfg.coloc.init_translation),
        scale_range=None if cfg.coloc.scale_range is None else tuple(float(v) for v in cfg.coloc.scale_range),
        inside=bool(cfg.coloc.inside),
        embedding_norm=cfg.coloc.embedding_norm,
        margin=float(cfg.coloc.margin),
        crop_size=cfg.coloc.crop_size,
        negatives=cfg.coloc.negatives,
        window_from=cfg.coloc.window_from,
        optimizer=cfg.optim.name,
        data_source=cfg.data.source,
        **seed_spec_fields(cfg, speed=False),
    )
    settings = train_settings(cfg)
    if cfg.embedding.kind == "table1":
        return spec, settings, None, None, Path(cfg.embedding.run_dir)
    if cfg.embedding.kind != "plain":
        raise ValueError(f"embedding.kind={cfg.embedding.kind!r}: use embedding=table1 or embedding=plain")
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    embedding_trainer = {**trainer, **{key: trainer["embedding"][key] for key in EMBEDDING_TRAINER_KEYS}}
    # A profile may give the embedding an optimiser of its own (trainer.embedding.optim: coloc_fast's).
    embedding_optim = trainer["embedding"].get("optim") or OmegaConf.to_container(cfg.embedding.optim)
    embedding_settings = train_settings(
        OmegaConf.create({"trainer": embedding_trainer, "optim": embedding_optim})
    )
    embedding_spec = EmbeddingSpec(
        seed=check_seed(cfg.embedding.seed),
        batch_size=embedding_trainer["batch_size"],
        profile=cfg.trainer.profile,
        reduced_budget=cfg.trainer.reduced_budget,
        param_budget=cfg.embedding.param_budget,
        data_source=cfg.data.source,
        data_dir=data_dir(cfg),
        device=cfg.trainer.device,
        speed=speed_settings(cfg),
    )
    return spec, settings, embedding_spec, embedding_settings, Path(cfg.embedding.run_dir)


if __name__ == "__main__":
    run_entry_point(main)
