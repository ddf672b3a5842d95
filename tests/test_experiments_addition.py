"""MNIST addition (Table 4): the models (shapes, equal budgets, identity at init, localisation parameters),
the training stream (seeded, resumable), every config and every cell end to end on synthetic digits, exact
resume, the trained model's reload, the table, the entry point, and the held-out validation set (stored,
loaded, reported)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import stn_repro.tasks.addition as addition_task
from experiments.addition import spec_from_config
from stn_analysis.tables.addition import addition_markdown
from stn_analysis.tables.aggregate import aggregate
from stn_analysis.tables.cli import main as table_main
from stn_repro.data import (
    DEFAULT_SEED,
    NUM_ADDITION_CLASSES,
    MnistArrays,
    build_all_sets,
    generate_addition_set,
    load_mnist,
    load_set,
    load_set_arrays,
    set_path,
    synthetic_mnist,
    train_indices,
    validation_indices,
    write_set,
)
from stn_repro.data.addition import AdditionStream
from stn_repro.data.files import DataError
from stn_repro.models.addition import (
    ADDITION_INPUT_SHAPE,
    ADDITION_MODEL_KINDS,
    NUM_PARALLEL,
    SPATIAL_KINDS,
    build_addition_model,
    transformers_of,
)
from stn_repro.paper import TABLE4_ROWS, addition_paper_error
from stn_repro.seeding import derive_seed
from stn_repro.tasks.addition import (
    AdditionSpec,
    addition_picture,
    load_addition_data,
    load_trained_addition_model,
    prepare_addition_seed,
    run_addition_seed,
)
from stn_repro.training.learners import evaluate, localisation_parameters
from stn_repro.training.records import read_record
from stn_repro.training.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(f"addition/{p.stem}" for p in (CONFIGS / "experiment" / "addition").glob("*.yaml"))
MODELS = [
    (kind, t)
    for kind in ADDITION_MODEL_KINDS
    for t in (("affine", "projective", "tps") if kind in SPATIAL_KINDS else (None,))
]
QUIET = {"log": lambda s: None}


def compose_addition(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("addition", overrides=overrides)


def smoke(experiment, *extra):
    return compose_addition(
        [f"experiment={experiment}", "profile=smoke", "data.source=synthetic", "logger=none", *extra]
    )


# --- models ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "transform"), MODELS)
def test_every_model_meets_the_budget_maps_pairs_to_19_sums_and_starts_at_the_identity(kind, transform):
    torch.manual_seed(0)
    model, info = build_addition_model(kind, transform=transform)
    assert abs(info.param_count - 400_000) <= 0.02 * 400_000
    assert info.param_count == sum(p.numel() for p in model.parameters())
    x = torch.rand(3, *ADDITION_INPUT_SHAPE)
    assert model(x).shape == (3, NUM_ADDITION_CLASSES)
    transformers = transformers_of(model)
    assert len(transformers) == {"fcn": 0, "cnn": 0, "st_fcn": 1, "2x_st_fcn": 2}[kind]
    loc = localisation_parameters(model)
    assert sum(p.numel() for p in loc) == info.localisation_params
    assert {id(p) for p in loc} == {id(p) for t in transformers for p in t.localisation.parameters()}
    if transformers:
        assert model.transformer(x).shape == (3, 2 * len(transformers), 42, 42)
        for transformer in transformers:  # each sees both channels and, at init, gives them back unchanged
            assert transformer.localisation[1].in_features == 2 * 42 * 42
            assert torch.allclose(transformer(x), x, atol=1e-5)
        # the classifier reads the (pooled) transformer output: 2 channels per transformer, 21x21
        assert model.classifier[1].in_features == 2 * len(transformers) * 21 * 21


def test_the_pool_is_a_setting_and_plain_models_are_never_pooled():
    unpooled, info = build_addition_model("2x_st_fcn", transform="affine", pool_after_transformer=False)
    assert unpooled.classifier[1].in_features == 4 * 42 * 42 and info.widths[0] < 40
    fcn, _ = build_addition_model("fcn", pool_after_transformer=True)
    assert fcn.classifier[1].in_features == 2 * 42 * 42
    with pytest.raises(ValueError, match="needs a transformer"):
        build_addition_model("2x_st_fcn")


# --- the training stream ----------------------------------------------------------------------------------------


def digits(n=10):
    data = synthetic_mnist(num_train=n, num_test=1)
    return data.train_images, data.train_labels


def test_the_stream_pairs_two_rts_digits_and_labels_their_sum():
    images, labels = digits()
    stream = AdditionStream(images, labels, batch_size=4, seed=1)
    x, y = stream.next_batch()
    assert x.shape == (4, 2, 42, 42) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, stream.last_digit_labels.sum(1)) and int(y.max()) < NUM_ADDITION_CLASSES
    assert torch.equal(x, x.mul(255).round().div(255))  # quantised like the stored sets
    assert stream.last_params["affine"].shape == (4, 2, 6)  # two independent RTS distortions per pair
    assert not torch.equal(stream.last_params["angle_deg"][:, 0], stream.last_params["angle_deg"][:, 1])


def test_the_stream_is_deterministic_by_seed_and_resumes_exactly_across_epochs():
    images, labels = digits()
    a, b, c = (AdditionStream(images, labels, batch_size=4, seed=s) for s in (1, 1, 2))
    first = [a.next_batch() for _ in range(3)]
    for xa, ya in first:
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0], c.next_batch()[0])
    state = a.state_dict()  # 12 of 10 digits read: mid-way through the second epoch
    assert a.epoch == 1
    ahead = [a.next_batch() for _ in range(4)]
    resumed = AdditionStream(images, labels, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    for xa, ya in ahead:
        xr, yr = resumed.next_batch()
        assert torch.equal(xa, xr) and torch.equal(ya, yr)
    with pytest.raises(ValueError, match="seed"):
        c.load_state_dict(state)


# --- configs --------------------------------------------------------------------------------------------------


def test_there_is_one_experiment_per_table4_cell_and_the_papers_numbers_are_in_place():
    assert len(EXPERIMENTS) == len(TABLE4_ROWS) == 8
    cells = set()
    for name in EXPERIMENTS:
        spec, _ = spec_from_config(compose_addition([f"experiment={name}"]))
        cells.add((spec.model, spec.transform))
    assert cells == set(TABLE4_ROWS)
    assert [addition_paper_error(*row) for row in TABLE4_ROWS if addition_paper_error(*row)] == [
        47.7,
        14.7,
        18.5,
        5.8,
    ]


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke", "fast"])
def test_every_option_composes_and_plain_models_ignore_the_transformer(profile):
    for name in EXPERIMENTS:
        cfg = compose_addition([f"experiment={name}", f"profile={profile}"])
        OmegaConf.to_container(cfg, resolve=True)
        spec, settings = spec_from_config(cfg)
        assert cfg.cell == spec.cell and cfg.task_name == "addition"
        assert spec.pool_after_transformer and spec.model_options["param_budget"] == 400_000
        # the fast profile holds out the validation digits (it picks on them), as for distorted MNIST
        assert spec.hold_out_validation == (profile == "fast") and spec.profile == profile
    for model in ("addition_fcn", "addition_cnn"):
        cfg = compose_addition([f"model={model}", "transformer=tps", f"profile={profile}"])
        spec, _ = spec_from_config(cfg)
        assert spec.transform is None and cfg.cell == spec.cell == f"addition-{cfg.model.kind}-none"
    spec, settings = spec_from_config(compose_addition([f"profile={profile}"]))  # the defaults
    assert spec.cell == "addition-2x_st_fcn-affine"
    if profile == "paper":
        assert (settings.iterations, spec.batch_size, settings.lr, settings.lr_step_every) == (
            150_000,
            256,
            0.01,
            50_000,
        )


def test_wrong_data_models_and_transformers_are_refused():
    with pytest.raises(ValueError, match="not the MNIST addition set"):
        spec_from_config(compose_addition(["data=rts"]))
    with pytest.raises(ValueError, match="not an MNIST addition model"):
        spec_from_config(compose_addition(["model=st_fcn"]))
    with pytest.raises(ValueError, match="needs a transformer"):
        spec_from_config(compose_addition(["model=addition_st_fcn", "transformer=none"]))
    with pytest.raises(ValueError, match="stacked seeds"):
        spec_from_config(compose_addition(["seeds=[1,2]"]))
    with pytest.raises(
        ValueError, match=r"hold_out_validation needs the real MNIST.*hold_out_validation=false"
    ):
        spec_from_config(compose_addition(["profile=fast", "data.source=synthetic"]))
    with pytest.raises(ValueError, match="hold_out_validation needs the real MNIST"):
        AdditionSpec(
            model="fcn",
            transform=None,
            seed=1,
            batch_size=4,
            profile="smoke",
            reduced_budget=True,
            data_source="synthetic",
            hold_out_validation=True,
        )
    spec, _ = spec_from_config(compose_addition(["profile=fast", "data.hold_out_validation=false"]))
    assert not spec.hold_out_validation


# --- every cell end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every Table 4 cell on the smoke profile and synthetic digits, run once into <root>/addition/smoke/."""
    root = tmp_path_factory.mktemp("addition-runs")
    for name in EXPERIMENTS:
        cfg = smoke(name, "trainer.checkpoint_every=0")  # checkpoints: see the resume test
        spec, settings = spec_from_config(cfg)
        run_dir = root / "addition" / "smoke" / spec.cell / "seed1"
        config = OmegaConf.to_container(cfg, resolve=True)
        run_addition_seed(spec, settings, run_dir, config=config, **QUIET)
    return root


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_the_smoke_profile_with_a_record(experiment, smoke_runs):
    cfg = smoke(experiment)
    spec, _ = spec_from_config(cfg)
    run_dir = smoke_runs / "addition" / "smoke" / spec.cell / "seed1"
    record = run_addition_seed(spec, TrainSettings(), run_dir, **QUIET)  # finished: returned as it is
    assert record["finished"] and record["iterations"] == 6 and 0 <= record["test_error"] <= 100
    assert record["experiment"] == "addition" and record["data"] == "addition" and record["synthetic"]
    assert (record["model"], record["transform"]) == (spec.model, spec.transform)
    assert record["paper_error"] == addition_paper_error(spec.model, spec.transform)
    assert record["reduced_budget"] and abs(record["param_count"] - 400_000) <= 8_000
    assert record["model_info"]["param_budget"] == 400_000
    assert record["test_set"]["source"] == "synthetic" and record["test_set"]["size"] == 256
    assert (run_dir / "model.pt").exists()
    transformers = {"st_fcn": 1, "2x_st_fcn": NUM_PARALLEL}.get(spec.model, 0)
    assert len(record["localisation_spread"] or []) == transformers
    pictures = list((run_dir / "pictures").glob("*.png"))
    assert len(pictures) == (1 if spec.model in SPATIAL_KINDS else 0)


def test_the_table_command_writes_table4_from_the_records(smoke_runs, tmp_path):
    out = tmp_path / "results"
    runs = smoke_runs / "addition"
    assert (
        table_main(["--experiment", "addition", "--runs", str(runs), "--out", str(out), "--profile", "smoke"])
        == 0
    )
    text = (out / "addition_table4_smoke.md").read_text()
    assert "REDUCED BUDGET" in text and "SYNTHETIC DIGITS" in text
    assert "| FCN | " in text and "| 47.7 | - |" in text and "| 2xST-FCN TPS | " in text
    assert "| 18.5 † | 22.6 |" in text and "not run" not in text
    assert (out / "addition_table4_smoke.csv").read_text().count("\n") == 1 + 8


def test_a_trained_model_reloads_and_scores_its_record(smoke_runs):
    spec, _ = spec_from_config(smoke("addition/2x_st_fcn_affine"))
    run_dir = smoke_runs / "addition" / "smoke" / spec.cell / "seed1"
    record = run_addition_seed(spec, TrainSettings(), run_dir, **QUIET)
    model = load_trained_addition_model(run_dir)
    data = load_addition_data(spec, torch.device("cpu"))
    assert evaluate(model, *data.eval_sets["test"]) == record["test_error"]
    figure = addition_picture(model, data.picture_inputs[:2], data.picture_labels[:2])
    assert len(figure.axes) == 2 * 6  # per pair: 2 input channels, then 2 per transformer
    assert (
        addition_picture(
            load_trained_addition_model(run_dir.parents[1] / "addition-fcn-none" / "seed1"),
            data.picture_inputs,
        )
        is None
    )


def test_rescore_scores_an_addition_run_on_todays_stored_set(smoke_runs, tmp_path, capsys):
    from stn_analysis.diagnostics.rescore import main as rescore_main

    spec, _ = spec_from_config(smoke("addition/st_fcn_affine"))
    run_dir = smoke_runs / "addition" / "smoke" / spec.cell / "seed1"
    record = run_addition_seed(spec, TrainSettings(), run_dir, **QUIET)
    data = load_addition_data(spec, torch.device("cpu"))
    path = set_path("addition", "test", tmp_path / "data")
    path.parent.mkdir(parents=True)
    write_set(
        path, {"images": data.test_images, "labels": data.test_labels}, {"set_name": "addition", "seed": 1}
    )
    assert rescore_main([str(run_dir), "--data-dir", str(tmp_path / "data")]) == 0
    error = f"{record['test_error']:.2f}%"
    assert f"recorded {error} (on the same test set), today {error}" in capsys.readouterr().out
    other = tmp_path / "svhn-run"
    other.mkdir()
    (other / "record.json").write_text(json.dumps(record | {"experiment": "svhn"}))
    assert rescore_main([str(other), "--data-dir", str(tmp_path / "data")]) == 1
    assert "is a svhn run: only runs scored on a stored set (mnist, addition)" in capsys.readouterr().err
    assert rescore_main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "no run record at" in err and "give a run's folder" in err


def test_an_interrupted_run_resumes_to_the_same_final_state(tmp_path):
    spec, settings = spec_from_config(smoke("addition/2x_st_fcn_tps", "trainer.iterations=8"))
    straight = run_addition_seed(spec, settings, tmp_path / "straight", **QUIET)
    stopped = run_addition_seed(
        spec, TrainSettings(**{**settings.__dict__, "stop_after": 3}), tmp_path / "resumed", **QUIET
    )
    assert stopped == {"finished": False, "iterations": 3, "stopped_by": None}
    resumed = run_addition_seed(spec, settings, tmp_path / "resumed", **QUIET)
    assert resumed["test_error"] == straight["test_error"] and resumed["history"] == straight["history"]
    # A fresh run returns its record as record.json holds it, as asking a finished run again does.
    assert resumed == read_record(tmp_path / "resumed" / "record.json")
    assert run_addition_seed(spec, settings, tmp_path / "resumed", **QUIET) == resumed
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_entry_point_runs_a_cell_into_runs_addition(tmp_path):
    env = {**os.environ, "STN_RUNS": str(tmp_path / "runs")}
    command = [sys.executable, "-m", "experiments.addition", "experiment=addition/cnn", "profile=smoke"]
    command += ["data.source=synthetic", "logger=none", "trainer.num_threads=1", "transformer=affine"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "addition" / "smoke" / "addition-cnn-none" / "seed1" / "record.json").exists()


def test_the_stored_addition_test_set_is_what_the_real_runs_score():
    try:
        images, labels = load_set("addition", "test")
    except DataError:
        pytest.skip("the stored MNIST sets are not built (make data-mnist)")
    assert images.shape == (10_000, 2, 42, 42) and images.dtype == torch.uint8
    assert int(labels.min()) >= 0 and int(labels.max()) <= 18
    spec = AdditionSpec(
        model="fcn", transform=None, seed=1, batch_size=4, profile="smoke", reduced_budget=True
    )
    assert spec.cell == "addition-fcn-none"


# --- the held-out validation set ------------------------------------------------------------------------------


def test_the_stored_val_set_pairs_the_validation_digits_by_its_own_seed_and_adds_to_built_data(tmp_path):
    mnist = synthetic_mnist(num_train=300, num_test=64, seed=0)
    logs = []
    build_all_sets(tmp_path, seed=1, log=logs.append, mnist=mnist)
    stored = load_set_arrays("addition", "val", tmp_path)
    val = validation_indices(num_train=300, num_validation=25)  # a twelfth of 300 synthetic digits
    seed = derive_seed(1, "stored-set", "addition", "val")  # as every other set and split chooses its seed
    expected = generate_addition_set(mnist.train_images[val], mnist.train_labels[val], seed)
    assert stored.keys() == expected.keys() and all(torch.equal(stored[k], expected[k]) for k in expected)
    assert stored["images"].shape == (25, 2, 42, 42)
    # only validation digits, none of those the held-out stream trains on
    assert torch.equal(stored["digit_labels"], mnist.train_labels[val][stored["digit_indices"]])
    assert not torch.isin(val, train_indices(True, num_train=300, num_validation=25)).any()
    other = build_all_sets(tmp_path / "other", seed=2, log=logs.append, mnist=mnist)
    assert not torch.equal(load_set("addition", "val", tmp_path / "other")[0], stored["images"])
    assert set_path("addition", "val", tmp_path / "other") in other
    # data built before the val set existed: the next build writes only it, the other files stay as they are
    path = set_path("addition", "val", tmp_path)
    path.unlink()
    others = {p: p.read_bytes() for p in path.parent.glob("*.h5")}
    logs.clear()
    build_all_sets(tmp_path, seed=1, log=logs.append, mnist=mnist)
    assert [line for line in logs if "wrote" in line] == ["  addition_val.h5: wrote (25, 2, 42, 42)"]
    assert {p: p.read_bytes() for p in others} == others
    assert torch.equal(load_set("addition", "val", tmp_path)[0], stored["images"])


def fake_mnist() -> MnistArrays:
    """MNIST-shaped noise, 60k distinct training digits: the hold-out wiring without the real data."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60_000, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (60_000,), generator=generator)
    small = synthetic_mnist(num_train=1, num_test=64, seed=0)
    return MnistArrays(images, labels, small.test_images, small.test_labels)


def test_holding_out_trains_on_55k_digits_scores_val_and_reports_the_images_to_the_paper(
    tmp_path, monkeypatch
):
    mnist = fake_mnist()
    monkeypatch.setattr(addition_task, "load_mnist", lambda data_dir=None: mnist)
    test = generate_addition_set(mnist.test_images, mnist.test_labels, seed=3)
    write_set(set_path("addition", "test", tmp_path), test, {"set_name": "addition", "seed": 3})
    spec, settings = spec_from_config(
        compose_addition(
            ["experiment=addition/fcn", "profile=smoke", "logger=none", "data.hold_out_validation=true"]
        )
    )
    spec.data_dir, spec.profile = tmp_path, "fast"  # labelled as the fast profile for its table
    assert spec.hold_out_validation and spec.data_source == "mnist"
    # data built before the val set existed: the error names the file and the fix
    with pytest.raises(DataError, match=r"addition val set.*addition_val\.h5 is missing.*make data-mnist"):
        load_addition_data(spec, torch.device("cpu"))
    val = validation_indices()
    stored_val = generate_addition_set(mnist.train_images[val], mnist.train_labels[val], seed=4)
    write_set(set_path("addition", "val", tmp_path), stored_val, {"set_name": "addition", "seed": 4})

    data = load_addition_data(spec, torch.device("cpu"))
    keep = train_indices(True)
    assert len(keep) == 55_000 and not torch.isin(keep, val).any()
    assert torch.equal(data.train_images, mnist.train_images[keep])
    assert torch.equal(data.train_labels, mnist.train_labels[keep])
    assert set(data.eval_sets) == {"test", "val"}
    assert torch.equal(data.eval_sets["val"][0], stored_val["images"])
    assert len(prepare_addition_seed(spec, data, torch.device("cpu")).stream) == 55_000
    without = load_addition_data(
        AdditionSpec(**{**spec.__dict__, "hold_out_validation": False}), torch.device("cpu")
    )
    assert set(without.eval_sets) == {"test"} and len(without.train_labels) == 60_000

    record = run_addition_seed(spec, settings, tmp_path / "run", **QUIET)
    assert record["val_error"] is not None and record["train_digits"] == 55_000
    assert [e["iteration"] for e in record["history"] if "val_error" in e] == [3, 6]
    (row,) = aggregate([record])
    assert row["seeds_reaching_paper"] is not None  # a val history: the images-to-the-paper block
    text = addition_markdown([row], "fast")
    assert "FAST PROFILE, NOT THE PAPER'S PROTOCOL" in text and "REDUCED BUDGET" not in text
    assert "until the validation error first reached the paper's test error" in text
    assert "| FCN | " + f"{row['seeds_reaching_paper']} of 1 |" in text


def addition_record(model, transform, seed, history, profile="fast"):
    return {
        "experiment": "addition",
        "data": "addition",
        "model": model,
        "transform": transform,
        "seed": seed,
        "profile": profile,
        "reduced_budget": True,
        "finished": True,
        "test_error": 6.0,
        "param_count": 400_123,
        "iterations": 3000,
        "batch_size": 128,
        "images_seen": 384_000,
        "wall_time_s": 180.0,
        "commit": "0123456789abcdef",
        "device": "cpu (x86_64, 2 threads)",
        "history": history,
    }


def test_the_fast_table_reports_the_images_until_the_validation_error_reached_the_paper():
    reached = [{"iteration": 1000, "val_error": 7.0}, {"iteration": 2000, "val_error": 5.5}]  # paper 5.8
    records = [
        addition_record("2x_st_fcn", "tps", 1, reached),
        addition_record("2x_st_fcn", "tps", 2, reached[:1]),  # never reached
        addition_record("2x_st_fcn", "affine", 1, reached),  # no paper number (secondary only)
    ]
    text = addition_markdown(aggregate(records), "fast")
    assert "FAST PROFILE, NOT THE PAPER'S PROTOCOL" in text and "pairs of 55k training digits" in text
    assert "REDUCED BUDGET" not in text
    assert "| 2xST-FCN TPS | 1 of 2 | 256,000 | 0.67% | 2.0 min |" in text
    assert "| 2xST-FCN Aff | no paper number | - | - | - |" in text
    # without a validation history (the paper and quick profiles): no such block
    quick = [addition_record("2x_st_fcn", "tps", 1, [{"iteration": 1000, "test_error": 5.0}], "quick")]
    text = addition_markdown(aggregate(quick), "quick")
    assert "REDUCED BUDGET" in text and "first reached" not in text


def test_the_stored_addition_val_set_is_what_held_out_runs_score():
    try:
        stored = load_set_arrays("addition", "val")
        mnist = load_mnist()
    except DataError:
        pytest.skip("the stored addition val set or MNIST is not built (make data-mnist)")
    val = validation_indices()
    assert stored["images"].shape == (5_000, 2, 42, 42)
    assert torch.equal(stored["digit_labels"], mnist.train_labels[val][stored["digit_indices"]])
    seed = derive_seed(DEFAULT_SEED, "stored-set", "addition", "val")
    again = generate_addition_set(mnist.train_images[val], mnist.train_labels[val], seed)
    assert torch.equal(again["digit_indices"], stored["digit_indices"])
    # CPU kernels elsewhere may put a pixel one grey level apart (see stn_repro.tables)
    assert (again["images"].short() - stored["images"].short()).abs().max() <= 1
    spec = AdditionSpec(
        model="fcn",
        transform=None,
        seed=1,
        batch_size=4,
        profile="fast",
        reduced_budget=True,
        hold_out_validation=True,
    )
    data = load_addition_data(spec, torch.device("cpu"))
    assert len(data.train_labels) == 55_000 and len(data.eval_sets["val"][1]) == 5_000
