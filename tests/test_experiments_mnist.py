"""The distorted-MNIST runner: every config composes and runs; sweeps, resume and W&B work end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.mnist import cell_from_config
from stn_repro.paper import paper_error
from stn_repro.tasks.mnist import run_cell
from stn_repro.training.loop import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
SMOKE = ["trainer=smoke", "data.source=synthetic", "logger=none"]


def compose_mnist(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("mnist", overrides=overrides)


def test_there_is_one_experiment_per_table1_cell_and_tc():
    assert len(EXPERIMENTS) == 4 * 8 + 4
    for name in EXPERIMENTS:
        cfg = compose_mnist([f"experiment={name}"])
        transform = None if cfg.transformer.name == "none" else cfg.transformer.name
        assert paper_error(cfg.data.name, cfg.model.kind, transform) is not None, name


@pytest.mark.parametrize(
    "group,options",
    [
        ("data", ["r", "rts", "p", "e", "tc"]),
        ("model", ["fcn", "cnn", "st_fcn", "st_cnn"]),
        ("transformer", ["affine", "projective", "tps", "none"]),
        ("trainer", ["paper", "quick", "smoke"]),
        ("logger", ["wandb", "none"]),
        ("optim", ["sgd"]),
    ],
)
def test_every_group_option_composes_and_resolves(group, options):
    assert sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")) == sorted(options)
    for option in options:
        cfg = compose_mnist([f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_instantiates_and_runs_the_smoke_profile(experiment, tmp_path):
    cfg = compose_mnist([f"experiment={experiment}", *SMOKE])
    spec, settings = cell_from_config(cfg)
    record = run_cell(
        spec, settings, tmp_path, config=OmegaConf.to_container(cfg, resolve=True), log=lambda s: None
    )
    assert record["finished"] and record["iterations"] == 6 and 0 <= record["test_error"] <= 100
    assert abs(record["param_count"] / 400_000 - 1) < 0.02
    assert record["paper_error"] == paper_error(spec.data, spec.model, spec.transform)
    saved = json.loads((tmp_path / "record.json").read_text())
    assert saved["config"]["data"]["name"] == spec.data and saved["commit"]
    assert saved["test_set"]["source"] == "synthetic" and len(saved["test_set"]["sha256"]) == 64
    if spec.transform:
        assert (tmp_path / "pictures" / "transform_0000006.png").exists()


def test_paper_profile_is_the_papers_protocol():
    cfg = compose_mnist([])
    spec, settings = cell_from_config(cfg)
    assert (settings.iterations, spec.batch_size, settings.lr, settings.lr_step_every) == (
        150_000,
        256,
        0.01,
        50_000,
    )
    assert settings.weight_decay == 0.0 and settings.lr_gamma == 0.1 and not spec.reduced_budget
    assert compose_mnist(["trainer=quick"]).trainer.reduced_budget


def test_a_plain_model_with_a_transformer_is_refused(tmp_path):
    cfg = compose_mnist(["model=cnn", "transformer=affine", *SMOKE])
    spec, settings = cell_from_config(cfg)
    with pytest.raises(ValueError, match="use transformer=none"):
        run_cell(spec, settings, tmp_path, log=lambda s: None)


def test_the_runner_resumes_an_interrupted_run_to_the_same_final_state(tmp_path):
    cfg = compose_mnist(
        ["experiment=tc_st_fcn_affine", *SMOKE, "trainer.iterations=8", "trainer.checkpoint_every=100"]
    )
    spec, settings = cell_from_config(cfg)
    quiet = {"log": lambda s: None}
    straight = run_cell(spec, settings, tmp_path / "straight", **quiet)
    stopped = run_cell(
        spec, TrainSettings(**{**settings.__dict__, "stop_after": 5}), tmp_path / "resumed", **quiet
    )
    assert (
        stopped == {"finished": False, "iterations": 5}
        and not (tmp_path / "resumed" / "record.json").exists()
    )
    resumed = run_cell(spec, settings, tmp_path / "resumed", **quiet)
    assert resumed["test_error"] == straight["test_error"]
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["learner"]["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["learner"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = []
    run_cell(spec, settings, tmp_path / "resumed", log=lines.append)  # finished: skipped, not rerun
    assert "already finished" in lines[0]


def run_module(args, tmp_path, **env):
    environment = {**os.environ, "STN_RUNS": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def test_the_issue_sweep_runs_six_jobs_and_the_table_command_reads_them(tmp_path):
    result = run_module(
        [
            "experiments.mnist",
            "-m",
            "data=rts",
            "model=st_cnn",
            "transformer=affine,tps",
            "seed=1,2,3",
            *SMOKE,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = sorted((tmp_path / "runs" / "mnist" / "smoke").rglob("record.json"))
    assert [r.parent.relative_to(tmp_path / "runs" / "mnist" / "smoke").as_posix() for r in records] == [
        f"rts-st_cnn-{t}/seed{s}" for t in ("affine", "tps") for s in (1, 2, 3)
    ]
    table = run_module(
        [
            "experiments.table",
            "--runs",
            str(tmp_path / "runs" / "mnist"),
            "--out",
            str(tmp_path / "results"),
            "--profile",
            "smoke",
        ],
        tmp_path,
    )
    assert table.returncode == 0, table.stderr
    text = (tmp_path / "results" / "mnist_table1_smoke.md").read_text()
    assert "REDUCED BUDGET" in text and "| ST-CNN TPS | not run (0.7) |" in text


def test_wandb_offline_writes_the_run_images_and_table(tmp_path):
    result = run_module(
        [
            "experiments.mnist",
            "experiment=r_st_fcn_affine",
            "trainer=smoke",
            "data.source=synthetic",
            "logger=wandb",
        ],
        tmp_path,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "mnist" / "smoke" / "r-st_fcn-affine" / "seed1"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    media = offline[0] / "files" / "media"
    assert list(media.rglob("*.png")), "the transformation pictures reach W&B"
    assert list(media.rglob("*.table.json")), "the result-vs-paper table reaches W&B"


def test_the_parallel_launcher_composes():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("mnist", overrides=["hydra/launcher=parallel"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
