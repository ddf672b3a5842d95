"""The SVHN runner: every config composes, every Table 2 cell runs on fixture sets, resume is exact, the
records and the table say what they are (synthetic, reduced), and a wrong set is refused clearly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.svhn import spec_from_config
from stn_analysis.diagnostics.svhn_windows import describe, ink_boxes_in_inputs, window_overlaps
from stn_analysis.tables.cli import main as table_main
from stn_repro.data import synthetic_mnist
from stn_repro.data.svhn.stored import load_svhn_set
from stn_repro.data.synthetic.svhn import SYNTHETIC_VERSION, build_synthetic_svhn
from stn_repro.paper import svhn_paper_error
from stn_repro.tasks.svhn import load_svhn_data, load_trained_svhn_model, run_svhn_seed
from stn_repro.training.learners import evaluate
from stn_repro.training.objectives import SEQUENCE
from stn_repro.training.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SVHN_EXPERIMENTS = sorted(f"svhn/{p.stem}" for p in (CONFIGS / "experiment" / "svhn").glob("*.yaml"))
QUIET = {"log": lambda s: None}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny synthetic stand-in, built by the real generator and importer (64 and 128 px)."""
    root = tmp_path_factory.mktemp("svhn-data")
    digits = synthetic_mnist(num_train=64, num_test=32)
    build_synthetic_svhn(
        root,
        digits.train_images,
        digits.train_labels,
        counts={"train": 24, "test": 10},
        num_validation=6,
        log=lambda s: None,
    )
    return root


def compose_svhn(overrides, data_dir=None):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("svhn", overrides=overrides)
    if data_dir is not None:
        OmegaConf.update(cfg, "paths.data_dir", str(data_dir))
    return cfg


def smoke(experiment, data_dir, *extra):
    size = experiment.split("/")[1].split("px")[0]
    return compose_svhn(
        [
            f"experiment={experiment}",
            f"data=synthetic_svhn{size}",
            "profile=smoke",
            "logger=none",
            *extra,
        ],
        data_dir,
    )


def test_there_is_one_experiment_per_table2_cell():
    assert len(SVHN_EXPERIMENTS) == 6
    cells = set()
    for name in SVHN_EXPERIMENTS:
        cfg = compose_svhn([f"experiment={name}"])
        assert svhn_paper_error(cfg.model.kind, cfg.data.size) is not None, name
        cells.add((cfg.model.kind, cfg.data.size))
    assert len(cells) == 6


@pytest.mark.parametrize("data", ["svhn64", "svhn128", "synthetic_svhn64", "synthetic_svhn128"])
@pytest.mark.parametrize("profile", ["paper", "quick", "smoke"])
def test_every_svhn_option_composes_and_resolves(data, profile):
    for model in ("svhn_cnn", "st_cnn_single", "st_cnn_multi"):
        cfg = compose_svhn([f"data={data}", f"profile={profile}", f"model={model}"])
        OmegaConf.to_container(cfg, resolve=True)
        spec, _settings = spec_from_config(cfg)
        assert spec.synthetic == data.startswith("synthetic") and (
            ("synthetic" in spec.cell) == spec.synthetic
        )
        assert spec.model_options["width"] == cfg.model.width


def test_paper_profile_is_the_papers_protocol():
    cfg = compose_svhn(["profile=paper"])
    spec, settings = spec_from_config(cfg)
    assert (settings.iterations, spec.batch_size, settings.lr, settings.lr_step_every) == (
        400_000,
        128,
        0.01,
        80_000,
    )
    assert (settings.weight_decay, settings.localisation_lr_multiplier, settings.lr_gamma) == (5e-4, 0.1, 0.1)
    assert spec.model_options == {"width": 1.0, "fc_layers": 3, "dropout": 0.5}
    assert spec.crop == 54 and list(spec.train_splits) == ["train", "extra"] and not spec.reduced_budget


def test_the_quick_profile_trains_with_the_optimiser_chosen_on_validation():
    spec, settings = spec_from_config(compose_svhn(["profile=quick", "data=synthetic_svhn128"]))
    assert (settings.lr, settings.nesterov, settings.lr_schedule, settings.warmup_iterations) == (
        0.01,
        True,
        "cosine",
        200,
    )
    assert settings.lr_at(100) == pytest.approx(0.01 * 101 / 200)  # warming up
    assert settings.lr_at(settings.iterations - 1) < 1e-3 * settings.lr  # decayed to about nothing
    assert (settings.iterations, spec.batch_size, spec.model_options["width"]) == (4000, 32, 0.25)
    assert settings.localisation_lr_multiplier == 0.1  # the paper's


@pytest.mark.parametrize("experiment", SVHN_EXPERIMENTS)
def test_every_svhn_experiment_runs_the_smoke_profile(experiment, data_dir, tmp_path):
    cfg = smoke(experiment, data_dir)
    spec, settings = spec_from_config(cfg)
    record = run_svhn_seed(
        spec, settings, tmp_path, config=OmegaConf.to_container(cfg, resolve=True), **QUIET
    )
    assert record["finished"] and record["iterations"] == 4 and 0 <= record["test_error"] <= 100
    assert record["experiment"] == "svhn" and record["synthetic"] and record["metric"] == "% sequence error"
    assert record["paper_error"] == svhn_paper_error(spec.model, spec.size)
    assert record["test_set"]["source"] == "synthetic-svhn" and record["test_set"]["size"] == 10
    assert record["test_set"]["stand_in_version"] == SYNTHETIC_VERSION  # which stand-in it was scored on
    assert "synthetic" in record["cell"] and (tmp_path / "model.pt").exists()
    pictures = list((tmp_path / "pictures").glob("*.png"))
    assert len(pictures) == (0 if spec.model == "cnn" else 1)


def test_a_trained_model_reloads_and_scores_its_record(data_dir, tmp_path):
    cfg = smoke("svhn/64px_st_cnn_multi", data_dir)
    spec, settings = spec_from_config(cfg)
    record = run_svhn_seed(spec, settings, tmp_path, **QUIET)
    model = load_trained_svhn_model(tmp_path)
    data = load_svhn_data(spec, torch.device("cpu"))
    images, labels = data.eval_sets["test"]
    assert evaluate(model, images, labels, objective=SEQUENCE) == record["test_error"]


def test_an_interrupted_svhn_run_resumes_to_the_same_final_state(data_dir, tmp_path):
    cfg = smoke("svhn/64px_st_cnn_single", data_dir, "trainer.iterations=8")
    spec, settings = spec_from_config(cfg)
    straight = run_svhn_seed(spec, settings, tmp_path / "straight", **QUIET)
    stopped = run_svhn_seed(
        spec, TrainSettings(**{**settings.__dict__, "stop_after": 3}), tmp_path / "resumed", **QUIET
    )
    assert stopped == {"finished": False, "iterations": 3, "stopped_by": None}
    resumed = run_svhn_seed(spec, settings, tmp_path / "resumed", **QUIET)
    assert resumed["test_error"] == straight["test_error"] and resumed["history"] == straight["history"]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_sweep_and_the_table_command_label_synthetic_and_reduced(data_dir, tmp_path):
    env = {**os.environ, "STN_DATA": str(data_dir), "STN_RUNS": str(tmp_path / "runs")}
    command = [
        sys.executable,
        "-m",
        "experiments.svhn",
        "-m",
        "data=synthetic_svhn64",
        "profile=smoke",
        "logger=none",
        "model=svhn_cnn,st_cnn_multi",
        "trainer.num_threads=1",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    records = sorted((tmp_path / "runs" / "svhn" / "smoke").glob("*/seed1/record.json"))
    assert [p.parts[-3] for p in records] == ["synthetic-svhn64-cnn", "synthetic-svhn64-st_cnn_multi"]
    out = tmp_path / "results"
    assert (
        table_main(["--experiment", "svhn", "--runs", str(tmp_path / "runs" / "svhn"), "--out", str(out)])
        == 0
    )
    text = (out / "svhn_table2_smoke_synthetic.md").read_text()
    assert "SYNTHETIC DATA" in text and "REDUCED BUDGET" in text and "| ST-CNN Multi | " in text
    assert "(3.6)" in text and "not run (3.9)" in text  # the paper's numbers beside ours
    assert not (out / "svhn_table2_smoke.md").exists()  # synthetic runs never land in the real table
    assert json.loads(records[1].read_text())["config"]["data"]["synthetic"] is True


def test_a_missing_set_names_the_make_target_and_an_mnist_set_is_refused(tmp_path):
    env = {**os.environ, "STN_DATA": str(tmp_path / "empty"), "STN_RUNS": str(tmp_path / "runs")}
    base = [sys.executable, "-m", "experiments.svhn", "profile=smoke", "logger=none"]
    for extra, words in [
        (["data=synthetic_svhn64"], "make data-svhn-synthetic"),
        (["data=svhn64"], "make data-svhn"),
        (["data=rts"], "is not an SVHN set"),
    ]:
        done = subprocess.run(base + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error:") and words in line
    assert not list((tmp_path / "runs").rglob("record.json"))


def test_window_overlaps_match_hand_computed_boxes():
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    centre_quarter = torch.tensor([[-0.5, -0.5, 0.5, 0.5]], dtype=torch.float64)
    kept, window_ink = window_overlaps(identity, centre_quarter)
    assert kept.item() == 1.0 and window_ink.item() == 0.25  # the whole input keeps it; a quarter is ink
    # Half the side, shifted right: the window covers x in [0, 1], y in [-0.5, 0.5].
    right_half = torch.tensor([[0.5, 0.0, 0.5, 0.0, 0.5, 0.0]], dtype=torch.float64)
    assert [
        t.item() for t in window_overlaps(right_half, torch.tensor([[0.0, -0.5, 1.0, 0.5]]).double())
    ] == [
        1.0,
        1.0,
    ]
    assert [
        t.item() for t in window_overlaps(right_half, torch.tensor([[-1.0, -0.5, 0.0, 0.5]]).double())
    ] == [
        0.0,
        0.0,
    ]
    # Half of an ink box that straddles the window's left edge.
    kept, window_ink = window_overlaps(right_half, torch.tensor([[-0.5, -0.5, 0.5, 0.5]]).double())
    assert (kept.item(), window_ink.item()) == (0.5, 0.5)


def test_the_ink_boxes_agree_between_the_64_and_128_px_inputs(data_dir):
    tree = data_dir / "synthetic-svhn" / "test"
    names = [bytes(n).decode() for n in load_svhn_set("synthetic-svhn", 64, "test", data_dir)["names"]]
    assert names == [
        bytes(n).decode() for n in load_svhn_set("synthetic-svhn", 128, "test", data_dir)["names"]
    ]
    at_64 = ink_boxes_in_inputs(tree, names, 64, 54)  # the 64 px set's central 54 px crop
    at_128 = ink_boxes_in_inputs(tree, names, 128, None)
    assert ((at_64 > -2) & (at_64 < 2)).all() and (at_64[:, 2:] > at_64[:, :2]).all()
    # The 128 px crop box is the 64 px one at twice the side about the same centre: a 54 px central crop of
    # the 64 px image spans 54/64 of its box, so its normalised coordinates are 64/54 x those of the 64 px
    # box, which are 2 x those of the 128 px image (up to the crop boxes' rounding to whole pixels).
    assert torch.allclose(at_64 * 54 / 64 / 2, at_128, atol=0.03)


def test_the_window_analysis_describes_a_finished_st_cnn_run(data_dir, tmp_path):
    cfg = smoke("svhn/64px_st_cnn_multi", data_dir)
    spec, settings = spec_from_config(cfg)
    run_svhn_seed(spec, settings, tmp_path, config=OmegaConf.to_container(cfg, resolve=True), **QUIET)
    text = describe(tmp_path, data_dir)
    assert "## synthetic-svhn64-st_cnn_multi seed 1" in text and "10 test images, 54 px inputs" in text
    identity = next(line for line in text.splitlines() if line.startswith("| identity"))
    assert identity.count("%") == 2
    cnn = smoke("svhn/64px_cnn", data_dir)
    cnn_spec, cnn_settings = spec_from_config(cnn)
    run_svhn_seed(
        cnn_spec, cnn_settings, tmp_path / "cnn", config=OmegaConf.to_container(cnn, resolve=True), **QUIET
    )
    with pytest.raises(ValueError, match="not an SVHN ST-CNN run"):
        describe(tmp_path / "cnn", data_dir)
