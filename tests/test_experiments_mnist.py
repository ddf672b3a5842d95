"""The distorted-MNIST runner: every config composes and runs; sweeps, resume, W&B and stacked seeds work."""

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from experiments.mnist import cell_from_config, check_stacked_config, run_folder, seeds_from_config
from stn_analysis.records import collect_records
from stn_analysis.tables.aggregate import aggregate
from stn_repro.data.files import DataError
from stn_repro.paper import paper_error
from stn_repro.tasks.mnist import (
    load_mnist_data,
    load_trained_mnist_model,
    run_mnist_seed,
    run_mnist_seeds_stacked,
)
from stn_repro.tracking import Tracker
from stn_repro.training.learners import evaluate
from stn_repro.training.settings import TrainSettings

# W&B is optional at run time (logger=none); where it is not installed (e.g. a bare GPU machine) these skip.
NEEDS_WANDB = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
SMOKE = ["profile=smoke", "data.source=synthetic", "logger=none"]


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
        ("profile", ["paper", "quick", "smoke", "fast"]),
        ("trainer", ["default"]),
        ("logger", ["wandb", "none"]),
        ("optim", ["sgd"]),
        ("budget", ["about_400k", "width_ranges"]),
    ],
)
def test_every_group_option_composes_and_resolves(group, options):
    # The groups also hold other experiments' options (svhn64, svhn_cnn, ...): the MNIST ones must be there.
    assert set(options) <= {p.stem for p in (CONFIGS / group).glob("*.yaml")}
    for option in options:
        cfg = compose_mnist([f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_the_width_ranges_budget_is_solved_per_data_set_and_gets_its_own_run_folder():
    for data, budget in [("r", 208_586), ("rts", 222_026), ("tc", 251_672)]:
        cfg = compose_mnist([f"data={data}", "budget=width_ranges"])
        spec, _ = cell_from_config(cfg)
        assert spec.model_options["param_budget"] == budget and spec.budget_reading == "width_ranges"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "mnist", overrides=["budget=width_ranges", "experiment=r_fcn"], return_hydra_config=True
        )
        plain = compose("mnist", overrides=["experiment=r_fcn"], return_hydra_config=True)
    assert cfg.hydra.run.dir.endswith("mnist/paper-width_ranges/r-fcn-none/seed1")
    assert plain.hydra.run.dir.endswith("mnist/paper/r-fcn-none/seed1")
    assert cell_from_config(plain)[0].model_options["param_budget"] == 400_000


def test_the_fast_profile_is_its_own_optimisation_on_held_out_validation_digits():
    cfg = compose_mnist(["profile=fast", "experiment=rts_st_cnn_tps"])
    spec, settings = cell_from_config(cfg)
    assert spec.profile == "fast" and spec.reduced_budget and spec.hold_out_validation
    assert (
        settings.lr_schedule == "cosine"
        and settings.nesterov
        and settings.iterations * spec.batch_size <= 0.05 * 38_400_000
    )
    paper_spec, paper_settings = cell_from_config(compose_mnist(["experiment=rts_st_cnn_tps"]))
    assert (
        paper_settings.lr_schedule == "step"
        and not paper_settings.nesterov
        and not paper_spec.hold_out_validation
    )
    assert spec.model_options == paper_spec.model_options  # the same models and budgets


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_instantiates_and_runs_the_smoke_profile(experiment, tmp_path):
    cfg = compose_mnist([f"experiment={experiment}", *SMOKE])
    spec, settings = cell_from_config(cfg)
    record = run_mnist_seed(
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
    assert compose_mnist(["profile=quick"]).trainer.reduced_budget


@pytest.mark.parametrize("model", ["cnn", "fcn"])
def test_a_plain_model_needs_no_transformer_none(model):
    # The default transformer is affine (for st_cnn); model=cnn or fcn selects transformer=none by itself,
    # in the cell name and run folder too, as the experiment files (r_cnn, ...) do.
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("mnist", overrides=[f"model={model}", "data=r"], return_hydra_config=True)
    assert cfg.transformer.name == "none" and cfg.cell == f"r-{model}-none"
    assert cfg.hydra.run.dir.endswith(f"/r-{model}-none/seed1")
    assert cell_from_config(cfg)[0].transform is None
    assert compose_mnist([f"experiment=r_{model}"]).cell == f"r-{model}-none"  # the experiment files agree


def test_a_plain_model_with_a_transformer_is_refused(tmp_path):
    # Asked for explicitly (model=cnn transformer=affine), a transformer the model cannot have is refused.
    cfg = compose_mnist(["model=cnn", "transformer=affine", *SMOKE])
    spec, settings = cell_from_config(cfg)
    with pytest.raises(ValueError, match="use transformer=none"):
        run_mnist_seed(spec, settings, tmp_path, log=lambda s: None)


def test_the_runner_resumes_an_interrupted_run_to_the_same_final_state(tmp_path):
    cfg = compose_mnist(
        ["experiment=tc_st_fcn_affine", *SMOKE, "trainer.iterations=8", "trainer.checkpoint_every=100"]
    )
    spec, settings = cell_from_config(cfg)
    quiet = {"log": lambda s: None}
    straight = run_mnist_seed(spec, settings, tmp_path / "straight", **quiet)
    stopped = run_mnist_seed(
        spec, TrainSettings(**{**settings.__dict__, "stop_after": 5}), tmp_path / "resumed", **quiet
    )
    assert (
        stopped == {"finished": False, "iterations": 5, "stopped_by": None}
        and not (tmp_path / "resumed" / "record.json").exists()
    )
    resumed = run_mnist_seed(spec, settings, tmp_path / "resumed", **quiet)
    assert resumed["test_error"] == straight["test_error"]
    # The record names every launch that trained the run: a resume (in another session, say) shows.
    assert [launch["iteration"] for launch in straight["launches"]] == [0]
    assert [launch["iteration"] for launch in resumed["launches"]] == [0, 5]
    assert all(launch["commit"] and launch["device"] for launch in resumed["launches"])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["learner"]["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["learner"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = []
    run_mnist_seed(spec, settings, tmp_path / "resumed", log=lines.append)  # finished: skipped, not rerun
    assert "already finished" in lines[0]


def run_module(args, tmp_path, **env):
    environment = {**os.environ, "STN_RUNS": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def test_missing_mnist_files_stop_the_runner_with_the_fix_and_no_traceback(tmp_path):
    result = run_module(
        ["experiments.mnist", "experiment=r_fcn", "profile=smoke", "logger=none"],
        tmp_path,
        STN_DATA=str(tmp_path / "empty"),
    )
    assert result.returncode == 1
    assert "error: MNIST file" in result.stderr and "make data-mnist" in result.stderr
    assert "Traceback" not in result.stderr


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
            "stn_analysis.tables.cli",
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


@NEEDS_WANDB
def test_wandb_offline_writes_the_run_images_and_table(tmp_path):
    def launch():
        command = [
            "experiments.mnist",
            "experiment=r_st_fcn_affine",
            "profile=smoke",
            "data.source=synthetic",
        ]
        return run_module([*command, "logger=wandb"], tmp_path, WANDB_MODE="offline", WANDB_SILENT="true")

    result = launch()
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "mnist" / "smoke" / "r-st_fcn-affine" / "seed1"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    media = offline[0] / "files" / "media"
    assert list(media.rglob("*.png")), "the transformation pictures reach W&B"
    assert list(media.rglob("*.table.json")), "the result-vs-paper table reaches W&B"
    again = launch()
    assert again.returncode == 0 and "already finished" in again.stdout
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1, "a finished run opens no new W&B run"


def test_the_parallel_launcher_composes():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("mnist", overrides=["hydra/launcher=parallel"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2


# --- stacked seeds (seeds=[...]) -------------------------------------------------------------------------------

# Smaller models than the paper's 400k parameters keep these tests at a few seconds each.
STACKED_SMOKE = ["experiment=r_st_fcn_affine", "model.param_budget=50000", *SMOKE]


def stacked_run(tmp_path, seeds, settings_overrides=(), **kwargs):
    """run_mnist_seeds_stacked as the runner calls it: the stacked folder and the seed folders side by side."""
    cfg = compose_mnist([*STACKED_SMOKE, *settings_overrides])
    spec, settings = cell_from_config(cfg)
    cell_dir = tmp_path / spec.profile / spec.cell
    records = run_mnist_seeds_stacked(
        spec,
        seeds,
        settings,
        cell_dir / run_folder(spec.seed, seeds),
        [cell_dir / f"seed{seed}" for seed in seeds],
        log=kwargs.pop("log", lambda s: None),
        **kwargs,
    )
    return records, cell_dir


@NEEDS_WANDB
def test_a_stacked_run_writes_each_seeds_record_and_wandb_run_in_its_seed_folder(tmp_path):
    result = run_module(
        ["experiments.mnist", *STACKED_SMOKE, "logger=wandb", "seeds=[2,1]"],
        tmp_path,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cell_dir = tmp_path / "runs" / "mnist" / "smoke" / "r-st_fcn-affine"
    assert (cell_dir / "seeds2-1" / "checkpoint.pt").exists() and (cell_dir / "seeds2-1" / ".hydra").exists()
    for seed in (1, 2):
        seed_dir = cell_dir / f"seed{seed}"
        record = json.loads((seed_dir / "record.json").read_text())
        assert record["seed"] == seed and record["config"]["seed"] == seed and record["iterations"] == 6
        assert record["engine"] == {
            "name": "stacked",
            "seeds": [2, 1],
            "stacked_dir": str(cell_dir / "seeds2-1"),
            "shared_wall_time": True,
        }
        assert (seed_dir / "pictures" / "transform_0000006.png").exists()
        (offline,) = (seed_dir / "wandb").glob("offline-run-*")  # one W&B run per seed
        assert list((offline / "files" / "media").rglob("*.png"))
        assert list((offline / "files" / "media").rglob("*.table.json"))
    rows = aggregate(collect_records(tmp_path / "runs" / "mnist"))
    assert [(r["seeds"], r["n_seeds"]) for r in rows] == [("1 2", 2)]


def test_single_records_say_their_engine_and_precision(tmp_path):
    cfg = compose_mnist(STACKED_SMOKE)
    spec, settings = cell_from_config(cfg)
    record = run_mnist_seed(spec, settings, tmp_path / "f32", log=lambda s: None)
    assert record["engine"] == {"name": "single"} and record["precision"] == "none"
    spec, settings = cell_from_config(compose_mnist([*STACKED_SMOKE, "trainer.autocast=bf16"]))
    assert run_mnist_seed(spec, settings, tmp_path / "bf16", log=lambda s: None)["precision"] == "bf16"


def test_a_stacked_relaunch_trains_only_the_unfinished_seeds(tmp_path):
    cfg = compose_mnist(STACKED_SMOKE)
    spec, settings = cell_from_config(cfg)
    cell_dir = tmp_path / spec.profile / spec.cell
    run_mnist_seed(replace(spec, seed=2), settings, cell_dir / "seed2", log=lambda s: None)
    alone = json.loads((cell_dir / "seed2" / "record.json").read_text())

    records, _ = stacked_run(tmp_path, [1, 2, 3])  # seed 2 is done: 1 and 3 train, stacked
    assert records[2] == alone
    assert [records[s]["engine"]["seeds"] for s in (1, 3)] == [[1, 3], [1, 3]]
    assert json.loads((cell_dir / "seed2" / "record.json").read_text()) == alone
    lines = []
    again, _ = stacked_run(tmp_path, [1, 2, 3], log=lines.append)  # all done: nothing trains
    saved = {s: json.loads((cell_dir / f"seed{s}" / "record.json").read_text()) for s in (1, 2, 3)}
    assert again == saved and sum("already finished" in line for line in lines) == 3 and len(lines) == 3

    records, _ = stacked_run(tmp_path, [3, 4])  # one left: it trains alone, in its seed folder
    assert records[3]["engine"]["name"] == "stacked" and records[4]["engine"] == {"name": "single"}
    assert (cell_dir / "seed4" / "checkpoint.pt").exists() and not (cell_dir / "seeds3-4").exists()


def test_an_interrupted_stacked_run_resumes_to_the_uninterrupted_final_state(tmp_path):
    longer = ["trainer.iterations=8", "trainer.checkpoint_every=100"]
    _, straight_dir = stacked_run(tmp_path / "straight", [1, 2], longer)
    stopped, resumed_dir = stacked_run(tmp_path / "resumed", [1, 2], [*longer, "trainer.stop_after=5"])
    assert stopped == {
        1: {"finished": False, "iterations": 5, "stopped_by": None},
        2: {"finished": False, "iterations": 5, "stopped_by": None},
    }
    assert not list(resumed_dir.rglob("record.json"))
    lines = []
    resumed, _ = stacked_run(tmp_path / "resumed", [1, 2], longer, log=lines.append)
    assert any("resuming 2 stacked models" in line and "iteration 5" in line for line in lines)
    assert all(resumed[s]["finished"] and resumed[s]["iterations"] == 8 for s in (1, 2))
    a = torch.load(straight_dir / "seeds1-2" / "checkpoint.pt", weights_only=False)["learner"]["stacked"]
    b = torch.load(resumed_dir / "seeds1-2" / "checkpoint.pt", weights_only=False)["learner"]["stacked"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("experiment", ["r_st_fcn_affine", "rts_st_cnn_tps"])
def test_each_stacked_seed_trains_as_its_single_seed_run(experiment, tmp_path):
    cfg = compose_mnist([f"experiment={experiment}", "model.param_budget=50000", *SMOKE])
    spec, settings = cell_from_config(cfg)
    seeds = [1, 2]
    quiet = {"log": lambda s: None}
    stacked = run_mnist_seeds_stacked(
        spec, seeds, settings, tmp_path / "stacked", [tmp_path / f"stacked_seed{s}" for s in seeds], **quiet
    )
    state = torch.load(tmp_path / "stacked" / "checkpoint.pt", weights_only=False)["learner"]["stacked"]
    for index, seed in enumerate(seeds):
        alone = run_mnist_seed(replace(spec, seed=seed), settings, tmp_path / f"alone{seed}", **quiet)
        checkpoint = torch.load(tmp_path / f"alone{seed}" / "checkpoint.pt", weights_only=False)
        weights = checkpoint["learner"]["model"]
        for name, value in weights.items():
            torch.testing.assert_close(state[name][index], value, rtol=1e-4, atol=1e-4, msg=name)
        for key in ("seed", "iterations", "images_seen", "param_count", "test_set", "paper_error"):
            assert stacked[seed][key] == alone[key], key
        assert abs(stacked[seed]["test_error"] - alone["test_error"]) <= 100 / alone["test_set"]["size"]


@pytest.mark.parametrize("value", ["[]", "[1,1]", "[0,2]", "[-1]", "3", "[1,a]", "[1.5]", "[true]"])
def test_bad_seeds_are_refused_naming_the_fix(value):
    cfg = compose_mnist([f"seeds={value}"])
    with pytest.raises(ValueError, match=r"distinct positive integers, e\.g\. seeds=\[1,2,3\]"):
        seeds_from_config(cfg.seeds)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("mnist", overrides=[f"seeds={value}"], return_hydra_config=True)
    with pytest.raises(InterpolationResolutionError, match=r"e\.g\. seeds=\[1,2,3\]"):
        cfg.hydra.run.dir  # noqa: B018  (Hydra resolves it first, before the job starts)


def test_stacked_runs_have_their_own_folder_and_single_runs_keep_theirs():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        single = compose("mnist", overrides=["seed=4"], return_hydra_config=True)
        stacked = compose("mnist", overrides=["seeds=[1,2,3]"], return_hydra_config=True)
    assert single.hydra.run.dir == "runs/mnist/paper/rts-st_cnn-affine/seed4"
    assert single.hydra.sweep.subdir == "rts-st_cnn-affine/seed4"
    assert stacked.hydra.run.dir == "runs/mnist/paper/rts-st_cnn-affine/seeds1-2-3"
    assert stacked.hydra.sweep.subdir == "rts-st_cnn-affine/seeds1-2-3"
    assert seeds_from_config(stacked.seeds) == [1, 2, 3] and seeds_from_config(single.seeds) is None


def test_stacked_seeds_refuse_the_speed_settings_they_cannot_run_and_a_seed_beside_them():
    for setting in ("trainer.channels_last=true", "trainer.compile=true"):
        with pytest.raises(ValueError, match=r"trainer\.channels_last=false trainer\.compile=false"):
            check_stacked_config(compose_mnist(["seeds=[1,2]", setting]), task_overrides=["seeds=[1,2]"])
    with pytest.raises(ValueError, match="not both"):
        check_stacked_config(compose_mnist(["seeds=[1,2]"]), task_overrides=["seeds=[1,2]", "seed=3"])
    check_stacked_config(compose_mnist(["seeds=[1,2]", "trainer.autocast=bf16"]), ["seeds=[1,2]"])


def test_a_stacked_checkpoint_resumes_its_seeds_even_if_one_was_finished_alone_meanwhile(tmp_path):
    _, cell_dir = stacked_run(tmp_path, [1, 2], ["trainer.stop_after=3"])
    cfg = compose_mnist(STACKED_SMOKE)
    spec, settings = cell_from_config(cfg)
    run_mnist_seed(replace(spec, seed=1), settings, cell_dir / "seed1", log=lambda s: None)
    alone = json.loads((cell_dir / "seed1" / "record.json").read_text())

    lines = []
    records, _ = stacked_run(tmp_path, [1, 2], log=lines.append)  # the checkpoint holds seeds 1 and 2
    assert any("resuming 2 stacked models" in line for line in lines)
    assert records[1] == alone and json.loads((cell_dir / "seed1" / "record.json").read_text()) == alone
    assert records[2]["finished"] and records[2]["engine"]["seeds"] == [1, 2]

    (cell_dir / "seed2" / "record.json").unlink()
    (cell_dir / "seeds1-2" / "stacked_seeds.json").write_text('{"seeds": [1, 3]}')
    with pytest.raises(ValueError, match=r"not the unfinished seeds \[2\]; delete that checkpoint"):
        stacked_run(tmp_path, [1, 2])


class RecordingTracker(Tracker):
    """Keeps what it is given, for the tests."""

    def __init__(self, seed):
        self.seed, self.logged, self.images, self.summaries, self.finished = seed, [], [], [], False

    def log(self, metrics, step=None):
        self.logged.append((step, metrics))

    def log_image(self, key, path, step=None, caption=None):
        self.images.append(Path(path))

    def summary(self, values):
        self.summaries.append(values)

    def finish(self):
        self.finished = True


def test_each_stacked_seed_reports_to_its_own_tracker(tmp_path):
    trackers = {}

    def make_tracker(seed_spec, seed_dir):
        assert seed_dir.name == f"seed{seed_spec.seed}"
        trackers[seed_spec.seed] = RecordingTracker(seed_spec.seed)
        return trackers[seed_spec.seed]

    records, cell_dir = stacked_run(tmp_path, [1, 2], make_tracker=make_tracker)
    assert sorted(trackers) == [1, 2]
    for seed, tracker in trackers.items():
        assert tracker.finished and tracker.summaries[0]["test_error"] == records[seed]["test_error"]
        steps = {step for step, metrics in tracker.logged if "train/loss" in metrics}
        assert steps == {2, 4, 6}  # log_every=2 in the smoke profile
        assert [step for step, metrics in tracker.logged if "test/error" in metrics] == [3, 6]
        assert tracker.images == [cell_dir / f"seed{seed}" / "pictures" / "transform_0000006.png"]
    again = {}
    stacked_run(tmp_path, [1, 2], make_tracker=lambda spec, d: again.setdefault(spec.seed, Tracker()))
    assert again == {}  # finished seeds get no tracker (no empty W&B runs)


def test_a_stacked_run_says_it_does_not_resume_an_unfinished_single_seed_run(tmp_path):
    cfg = compose_mnist(STACKED_SMOKE)
    spec, settings = cell_from_config(cfg)
    cell_dir = tmp_path / spec.profile / spec.cell
    stopped = replace(settings, stop_after=2)
    assert not run_mnist_seed(replace(spec, seed=2), stopped, cell_dir / "seed2", log=lambda s: None)[
        "finished"
    ]
    lines = []
    records, _ = stacked_run(tmp_path, [1, 2], log=lines.append)
    assert [records[s]["engine"]["seeds"] for s in (1, 2)] == [[1, 2], [1, 2]]
    assert any("seed2/checkpoint.pt (an unfinished single-seed run) is not resumed" in line for line in lines)


def test_a_single_run_makes_its_tracker_only_once_the_data_load_and_finishes_it(tmp_path):
    spec, settings = cell_from_config(compose_mnist(["experiment=r_fcn", *SMOKE]))
    made = []

    def make_tracker():
        made.append(RecordingTracker(spec.seed))
        return made[-1]

    missing = replace(spec, data_source="mnist", data_dir=tmp_path / "empty")
    with pytest.raises(DataError, match="make data-mnist"):
        run_mnist_seed(missing, settings, tmp_path / "missing", make_tracker=make_tracker, log=lambda s: None)
    assert made == []  # a missing data file leaves no (empty) W&B run behind

    record = run_mnist_seed(spec, settings, tmp_path / "run", make_tracker=make_tracker, log=lambda s: None)
    (tracker,) = made
    assert tracker.finished and tracker.summaries[0]["test_error"] == record["test_error"]
    run_mnist_seed(spec, settings, tmp_path / "run", make_tracker=make_tracker, log=lambda s: None)
    assert len(made) == 1  # a finished run is only reported: no new tracker


def test_every_finished_seed_saves_weights_that_reproduce_its_test_error(tmp_path):
    # Single and stacked runs alike: <seed dir>/model.pt rebuilds the trained model, which scores the
    # record's test error on the cell's test set.
    cfg = compose_mnist(STACKED_SMOKE)
    spec, settings = cell_from_config(cfg)
    single_dir = tmp_path / "single" / "seed1"
    runs = {single_dir: run_mnist_seed(spec, settings, single_dir, log=lambda s: None)}
    records, cell_dir = stacked_run(tmp_path / "stacked", [1, 2])
    runs.update({cell_dir / f"seed{seed}": record for seed, record in records.items()})
    test_images, test_labels = load_mnist_data(spec, torch.device("cpu")).eval_sets["test"]
    for seed_dir, record in runs.items():
        assert record["weights"] == "model.pt" and (seed_dir / "model.pt").is_file()
        model = load_trained_mnist_model(seed_dir)
        assert not model.training
        assert evaluate(model, test_images, test_labels) == record["test_error"]
    assert runs[single_dir]["test_error"] != records[2]["test_error"]  # two seeds, two models


def test_loading_weights_of_an_unfinished_run_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="relaunch it to resume"):
        load_trained_mnist_model(tmp_path)
    torch.save({"format": 99}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="format 99"):
        load_trained_mnist_model(tmp_path)


def test_rescore_scores_the_saved_weights_on_todays_test_set_and_says_whether_it_changed(tmp_path, capsys):
    from stn_analysis.diagnostics.rescore import main as rescore_main
    from stn_repro.data.sets import set_checksum, set_path, write_set
    from stn_repro.tasks.mnist import load_mnist_data, load_trained_mnist_model
    from stn_repro.training.learners import evaluate

    cfg = compose_mnist(["experiment=r_st_fcn_affine", "model.param_budget=50000", *SMOKE])
    spec, settings = cell_from_config(cfg)
    run_dir = tmp_path / "run"
    record = run_mnist_seed(spec, settings, run_dir, log=lambda s: None)
    data = load_mnist_data(spec, torch.device("cpu"))
    path = set_path("r", "test", tmp_path / "data")
    path.parent.mkdir(parents=True)
    write_set(path, {"images": data.test_images, "labels": data.test_labels}, {"set_name": "r", "seed": 1})
    args = [str(run_dir), "--data-dir", str(tmp_path / "data")]
    assert rescore_main(args) == 0
    out = capsys.readouterr().out
    assert (
        f"recorded {record['test_error']:.2f}% (on the same test set), today {record['test_error']:.2f}%"
        in out
    )
    changed = data.test_images.clone()
    changed[0, 0, 0, 0] += 1  # one pixel one grey level apart
    path.unlink()
    write_set(path, {"images": changed, "labels": data.test_labels}, {"set_name": "r", "seed": 1})
    assert rescore_main(args) == 0
    assert "on a test set that differs from today's" in capsys.readouterr().out
    assert "rescored" not in json.loads((run_dir / "record.json").read_text())  # nothing written
    for _ in range(2):  # a second --write on the same set replaces the entry, it does not add one
        assert rescore_main([*args, "--write"]) == 0
        assert "(written to its record)" in capsys.readouterr().out
    saved = json.loads((run_dir / "record.json").read_text())
    (entry,) = saved["rescored"]
    assert saved["test_error"] == record["test_error"]  # the run's own score is kept
    assert entry["test_set"]["sha256"] == set_checksum(changed, data.test_labels)
    assert entry["test_error"] == pytest.approx(
        evaluate(load_trained_mnist_model(run_dir), changed, data.test_labels)
    )
    assert {"commit", "device", "date"} <= entry.keys()
    (run_dir / "model.pt").unlink()
    assert rescore_main(args) == 1 and "has no model.pt" in capsys.readouterr().err


def test_a_run_records_its_transformers_spread_and_the_check_finds_a_dead_localisation_net(tmp_path, capsys):
    from stn_analysis.diagnostics.localisation_spread import main as spread_main
    from stn_repro.data.sets import set_path, write_set

    cfg = compose_mnist(["experiment=r_st_fcn_affine", "model.param_budget=50000", *SMOKE])
    spec, settings = cell_from_config(cfg)
    run_dir = tmp_path / "records" / "r-st_fcn-affine" / "seed1"
    lines = []
    record = run_mnist_seed(spec, settings, run_dir, log=lines.append)
    assert len(record["localisation_spread"]) == 1  # one transformer
    # Every evaluation measured it too (the history, the log), the last on the final weights.
    evaluations = [e for e in record["history"] if "test_error" in e]
    assert evaluations and all(len(e["localisation_spread"]) == 1 for e in evaluations)
    assert evaluations[-1]["localisation_spread"][0] == pytest.approx(
        record["localisation_spread"][0], abs=1e-6
    )
    assert any(line.startswith("eval ") and "| spread " in line for line in lines)
    fcn_spec, fcn_settings = cell_from_config(
        compose_mnist(["experiment=r_fcn", "model.param_budget=50000", *SMOKE])
    )
    fcn = run_mnist_seed(fcn_spec, fcn_settings, tmp_path / "fcn", log=lambda s: None)
    assert fcn["localisation_spread"] is None and not any("localisation_spread" in e for e in fcn["history"])
    data = load_mnist_data(spec, torch.device("cpu"))
    path = set_path("r", "test", tmp_path / "data")
    path.parent.mkdir(parents=True)
    write_set(path, {"images": data.test_images, "labels": data.test_labels}, {"set_name": "r", "seed": 1})
    # The check on today's set gives what the run recorded; a record without the field gets it with --write.
    args = ["--records", str(tmp_path / "records"), "--data-dir", str(tmp_path / "data")]
    saved = json.loads((run_dir / "record.json").read_text())
    del saved["localisation_spread"]
    (run_dir / "record.json").write_text(json.dumps(saved))
    assert spread_main(args) == 0
    assert "written" not in capsys.readouterr().out
    out_file = tmp_path / "spread.md"
    assert spread_main([*args, "--write", "--out", str(out_file)]) == 0
    assert "(written to its record)" in capsys.readouterr().out
    rewritten = json.loads((run_dir / "record.json").read_text())
    assert rewritten["localisation_spread"] == pytest.approx(record["localisation_spread"])
    assert {"commit", "date", "images", "test_set_sha256"} <= rewritten["localisation_spread_from"].keys()
    assert "0 of 1 runs collapsed" in out_file.read_text()
    # Every ReLU of the first hidden layer dead: one transform for every image.
    weights = torch.load(run_dir / "model.pt", weights_only=False)
    weights["state_dict"]["transformer.localisation.1.bias"].fill_(-1e3)
    torch.save(weights, run_dir / "model.pt")
    assert spread_main([str(run_dir), "--data-dir", str(tmp_path / "data"), "--out", str(out_file)]) == 0
    assert "spread 0: COLLAPSED (a fixed warp)" in capsys.readouterr().out
    assert "| r-st_fcn-affine seed 1 | smoke |" in out_file.read_text() and "**yes**" in out_file.read_text()
    # a run trained with another optimiser setting than its profile gives the cell is named with it
    saved = json.loads((run_dir / "record.json").read_text())
    saved["config"] = {"optim": {"lr": 0.5}}
    (run_dir / "record.json").write_text(json.dumps(saved))
    assert spread_main([str(run_dir), "--data-dir", str(tmp_path / "data"), "--out", str(out_file)]) == 0
    assert "| r-st_fcn-affine seed 1 (lr=0.5) | smoke |" in out_file.read_text()
    with pytest.raises(SystemExit):
        spread_main([])
    (run_dir / "model.pt").unlink()
    assert spread_main([str(run_dir), "--data-dir", str(tmp_path / "data")]) == 1
    assert "has no model.pt" in capsys.readouterr().err


def test_error_by_distortion_rescores_a_run_and_bins_its_errors(tmp_path, capsys, monkeypatch):
    import stn_analysis.diagnostics.error_by_distortion as breakdown
    from stn_analysis.diagnostics.error_by_distortion import main as breakdown_main
    from stn_repro.data.mnist import MnistArrays
    from stn_repro.data.sets import generate_set, set_checksum, set_path, write_set

    cfg = compose_mnist(["experiment=p_fcn", "model.param_budget=50000", *SMOKE])
    spec, settings = cell_from_config(cfg)
    run_dir = tmp_path / "run"
    run_mnist_seed(spec, settings, run_dir, log=lambda s: None)
    raw = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    stored = generate_set("p", raw, labels, seed=3)
    # The MNIST files hold the digits the stored set was made from (the real ones fail no md5 check here).
    monkeypatch.setattr(breakdown, "load_mnist", lambda data_dir: MnistArrays(raw, labels, raw, labels))
    path = set_path("p", "test", tmp_path / "data")
    path.parent.mkdir(parents=True)
    write_set(path, stored, {"set_name": "p", "seed": 3})
    out_file = tmp_path / "out" / "p.md"
    args = [str(run_dir), "--data-dir", str(tmp_path / "data"), "--edges", "0,4,6", "--out", str(out_file)]
    assert breakdown_main(args) == 0
    text = capsys.readouterr().out
    assert "p-fcn-none seed 1" in text and "| [0, 4) |" in text and "| >= 6 |" in text
    assert "| % of the ink off the frame |" in text and "| [0, 2) |" in text and "| >= 25 |" in text
    ink_rows = [
        line
        for line in text.splitlines()
        if line.startswith(("| [0, 2) |", "| [2, 10)", "| [10, 25)", "| >= 25"))
    ]
    assert sum(int(line.split("|")[2].replace(",", "")) for line in ink_rows) == 64  # every image in one bin
    assert "| offset std (px) | % error | effective images |" in text and "| 3.5 |" in text
    assert breakdown_main([*args[:-2], "--offset-stds", "5,2"]) == 0  # without --out
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 5 |", "| 2 |"))]
    assert len(rows) == 2 and rows[0].split("|")[3].strip() == "64"  # the drawn std: every image counts once
    with pytest.raises(SystemExit):
        breakdown_main([*args[:-2], "--offset-stds", "5,x"])
    assert "--offset-stds '5,x': give comma-separated numbers" in capsys.readouterr().err
    assert "differs from today's" in text  # scored on this stored set, not the run's own test set
    assert out_file.read_text().strip() == text.strip()
    # A score that stn-rescore added for this very set counts as the record's, and says so.
    record_path = run_dir / "record.json"
    record = json.loads(record_path.read_text())
    stored_sha = set_checksum(stored["images"], stored["labels"].long())
    record["rescored"] = [{"test_error": 12.5, "test_set": {"sha256": stored_sha}}]
    record_path.write_text(json.dumps(record))
    assert breakdown_main(args) == 0
    rescored_text = capsys.readouterr().out
    assert "(recorded 12.50%, rescored from its weights on this set" in rescored_text
    assert "differs from today's" not in rescored_text
    monkeypatch.setattr(
        breakdown, "load_mnist", lambda data_dir: MnistArrays(raw, labels, raw, labels.flip(0))
    )
    assert breakdown_main(args) == 1 and "do not follow the MNIST test digits" in capsys.readouterr().err
    assert breakdown_main([str(run_dir), "--data-dir", str(tmp_path / "nothing")]) == 1
    assert "make data-mnist" in capsys.readouterr().err
