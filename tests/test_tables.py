"""The table maker turns run records into the right tables."""

import importlib.util
import json

import pytest
import torch

from stn_analysis.diagnostics.rescore import LOADERS
from stn_analysis.records import STORED_TEST_SET_EXPERIMENTS, collect_records, mark_test_set_changes
from stn_analysis.tables.addition import addition_markdown
from stn_analysis.tables.aggregate import aggregate, first_reaching, recipe_deviation, to_csv
from stn_analysis.tables.cli import main as table_main
from stn_analysis.tables.mnist import to_markdown

# W&B is optional at run time (logger=none); where it is not installed (e.g. a bare GPU machine) these skip.
NEEDS_WANDB = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")


# The training length each profile gives (configs/profile/mnist/) (a record of other length is another recipe).
PROFILE_LENGTH = {"quick": (1500, 64), "fast": (15_000, 128), "paper": (150_000, 256)}


def record(data, model, transform, seed, error, profile="quick", finished=True):
    iterations, batch_size = PROFILE_LENGTH.get(profile, (1500, 64))
    return {
        "cell": f"{data}-{model}-{transform or 'none'}",
        "data": data,
        "model": model,
        "transform": transform,
        "seed": seed,
        "profile": profile,
        "reduced_budget": profile != "paper",
        "finished": finished,
        "test_error": error,
        "paper_error": None,
        "param_count": 400_123,
        "iterations": iterations,
        "batch_size": batch_size,
        "images_seen": iterations * batch_size,
        "wall_time_s": 10.0,
        "commit": "0123456789abcdef",
        "device": "cpu (x86_64, 2 threads)",
    }


@pytest.fixture
def runs(tmp_path):
    records = [
        record("rts", "st_cnn", "affine", 1, 1.0),
        record("rts", "st_cnn", "affine", 2, 2.0),
        record("rts", "st_cnn", "affine", 3, 3.0),
        record("rts", "cnn", None, 1, 4.0),
        record("tc", "st_cnn", "affine", 1, 5.0),
        record("r", "fcn", None, 1, 9.0, finished=False),  # unfinished: ignored
        record("r", "fcn", None, 1, 2.5, profile="paper"),
    ]
    for i, rec in enumerate(records):
        folder = tmp_path / "runs" / f"run{i}"
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(rec))
    return tmp_path / "runs"


def test_aggregate_means_spreads_and_paper_numbers(runs):
    rows = {
        (r["profile"], r["data"], r["model"], r["transform"]): r for r in aggregate(collect_records(runs))
    }
    assert len(rows) == 4
    st = rows[("quick", "rts", "st_cnn", "affine")]
    assert st["n_seeds"] == 3 and st["seeds"] == "1 2 3"
    assert st["error_mean"] == pytest.approx(2.0) and st["error_std"] == pytest.approx(1.0)
    assert st["paper_error"] == 0.5 and st["difference"] == pytest.approx(1.5)
    assert rows[("quick", "rts", "cnn", "")]["error_std"] is None  # one seed: no spread
    assert rows[("quick", "tc", "st_cnn", "affine")]["paper_error"] == 1.7
    assert (
        rows[("paper", "r", "fcn", "")]["paper_error"] == 2.1
        and not rows[("paper", "r", "fcn", "")]["reduced_budget"]
    )


def test_markdown_has_the_paper_layout_and_labels_reduced_budgets(runs):
    rows = aggregate(collect_records(runs))
    text = to_markdown(rows, "quick")
    assert "REDUCED BUDGET" in text and "1,500 iterations of batch 64" in text
    assert (
        "| ST-CNN Aff | not run (0.7) | 2.00 ± 1.00 (0.5) | not run (0.8) | not run (1.2) | 5.00 (1.7) |"
        in text
    )
    assert "| CNN | not run (1.2) | 4.00 (0.8) |" in text
    assert "REDUCED BUDGET" not in to_markdown(rows, "paper")
    assert to_csv([r for r in rows if r["profile"] == "quick"]).count("\n") == 1 + 3
    with pytest.raises(ValueError, match="no finished runs of profile 'smoke'"):
        to_markdown(rows, "smoke")


def test_study_set_runs_fill_no_table1_cell_and_sit_beside_the_set_they_vary():
    records = [
        record("p", "fcn", None, 1, 5.0),
        record("p_4px", "fcn", None, 1, 3.0),
        record("p_4px", "fcn", None, 2, 3.2),
        record("p_4px", "st_cnn", "affine", 1, 0.9),
    ]
    rows = aggregate(records)
    assert {r["data"]: r["paper_error"] for r in rows if r["model"] == "fcn"} == {"p": 3.1, "p_4px": None}
    text = to_markdown(rows, "quick")
    assert "| FCN | not run (2.1) | not run (5.2) | 5.00 (3.1) | not run (3.2) |" in text  # Table 1 row
    assert "Study set `p_4px`, NOT THE PAPER'S RECIPE" in text
    assert "| FCN | 3.10 ± 0.14 | 5.00 | 3.1 |" in text
    assert "| ST-CNN Aff | 0.90 | not run | 0.8 |" in text
    assert "| ST-FCN Aff |" not in text.split("Study set")[1].split("Images")[0]  # only cells that ran
    assert "Study set" not in to_markdown(aggregate(records[:1]), "quick")


def test_table_command_writes_csv_and_markdown(runs, tmp_path, capsys):
    assert table_main(["--runs", str(runs), "--out", str(tmp_path / "results"), "--profile", "quick"]) == 0
    assert (tmp_path / "results" / "mnist_table1_quick.csv").exists()
    text = (tmp_path / "results" / "mnist_table1_quick.md").read_text()
    assert "ST-CNN Aff" in text
    # The table names the records folder it was made from, so the same command makes it again.
    assert f"- Made by `stn-table --runs {runs} --profile quick` from the run records." in text
    assert table_main(["--runs", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    assert "no finished mnist runs" in capsys.readouterr().err


@NEEDS_WANDB
def test_table_command_logs_the_table_to_wandb_offline(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("STN_RUNS", str(tmp_path / "runs_root"))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default
    out = tmp_path / "results"
    assert table_main(["--runs", str(runs), "--out", str(out), "--profile", "quick", "--wandb"]) == 0
    # W&B's files go where runs go (ignored by git), never beside the tables.
    assert not (out / "wandb").exists()
    offline = list((tmp_path / "runs_root" / "wandb").glob("offline-run-*"))  # W&B nests its own wandb/
    assert len(offline) == 1
    tables = list((offline[0] / "files" / "media").rglob("*.table.json"))
    assert tables and "ST-CNN Aff" in tables[0].read_text()


def test_a_stacked_runs_shared_wall_time_counts_once():
    stacked = {"name": "stacked", "seeds": [1, 2], "stacked_dir": "runs/x/seeds1-2", "shared_wall_time": True}
    runs = [
        record("rts", "st_cnn", "affine", 1, 1.0) | {"engine": stacked, "wall_time_s": 30.0},
        record("rts", "st_cnn", "affine", 2, 2.0) | {"engine": stacked, "wall_time_s": 30.0},
        record("rts", "st_cnn", "affine", 3, 3.0) | {"engine": {"name": "single"}},  # 10 s
        record("rts", "st_cnn", "affine", 4, 3.0),  # an older record without the engine field: 10 s
    ]
    (row,) = aggregate(runs)
    assert row["n_seeds"] == 4 and row["wall_time_s"] == 50.0


def write_records(folder, records):
    for i, rec in enumerate(records):
        (folder / f"run{i}").mkdir(parents=True)
        (folder / f"run{i}" / "record.json").write_text(json.dumps(rec))
    return folder


def test_each_budget_reading_gets_its_own_table_and_never_mixes(tmp_path):
    runs = write_records(
        tmp_path / "runs",
        [
            record("r", "fcn", None, 1, 2.3, profile="paper"),  # an older record: the about_400k reading
            record("r", "fcn", None, 1, 2.6, profile="paper") | {"budget_reading": "width_ranges"},
        ],
    )
    out = tmp_path / "results"
    assert table_main(["--runs", str(runs), "--out", str(out), "--profile", "paper"]) == 0
    about, ranges = (
        (out / "mnist_table1_paper.md").read_text(),
        (out / "mnist_table1_paper_width_ranges.md").read_text(),
    )
    assert "| FCN | 2.30 (2.1) |" in about and "reading `about_400k`" in about
    assert "| FCN | 2.60 (2.1) |" in ranges and "reading `width_ranges`" in ranges and "208,586" in ranges


def test_records_scored_on_another_test_set_are_flagged_not_mixed_in_silently(tmp_path):
    def scored_on(sha, data="r"):
        return {"test_set": {"source": "mnist", "sha256": sha, "size": 10_000, "generator_version": 2}}

    records = [
        record("r", "fcn", None, 1, 2.0, profile="paper") | scored_on("aaa"),
        record("r", "fcn", None, 2, 2.2, profile="paper") | scored_on("bbb"),
        record("rts", "fcn", None, 1, 5.0, profile="paper") | scored_on("ccc"),
        record("p", "fcn", None, 1, 3.0, profile="paper") | scored_on("ddd"),
    ]
    mark_test_set_changes(records, {"r": "aaa", "rts": "ccc", "p": None})
    assert [r["test_set_changed"] for r in records] == [False, True, False, None]
    rows = {r["data"]: r for r in aggregate(records)}
    assert rows["r"]["test_set_check"] == "differs (1 of 2)" and rows["rts"]["test_set_check"] == "same"
    assert rows["p"]["test_set_check"] == "not checked"
    text = to_markdown(list(rows.values()), "paper")
    assert "| FCN | 2.10 ± 0.14† (2.1) | 5.00 (5.2) | 3.00 (3.1) |" in text
    assert (
        "† Scored on a test set whose sha256 differs from the one built here (r-fcn-none differs (1 of 2))"
        in text
    )
    assert "not checked for 1 cell(s)" in text


def test_a_record_rescored_on_todays_test_set_shows_that_score_unflagged():
    def scored_on(sha, rescored=()):
        return {
            "test_set": {"source": "mnist", "sha256": sha, "size": 10_000, "generator_version": 2},
            "rescored": [{"test_error": e, "test_set": {"sha256": s}} for s, e in rescored],
        }

    records = [
        record("r", "fcn", None, 1, 2.0, profile="paper")
        | scored_on("old", [("elsewhere", 9.0), ("today", 2.1)]),
        record("r", "fcn", None, 2, 2.4, profile="paper") | scored_on("today"),
        record("p", "fcn", None, 1, 3.0, profile="paper") | scored_on("old", [("elsewhere", 3.1)]),
    ]
    mark_test_set_changes(records, {"r": "today", "p": "today"})
    assert [r["test_set_changed"] for r in records] == [False, False, True]
    assert records[0]["test_error"] == 2.1 and records[0]["recorded_test_error"] == 2.0
    assert records[2]["test_error"] == 3.0  # no score on today's set: the run's own, flagged
    rows = {r["data"]: r for r in aggregate(records)}
    assert rows["r"]["test_set_check"] == "rescored (1 of 2)" and rows["r"]["error_mean"] == 2.25
    text = to_markdown(list(rows.values()), "paper")
    assert "| FCN | 2.25 ± 0.21 (2.1) | not run (5.2) | 3.00† (3.1) |" in text
    assert "Scored again on the test set built here from their saved weights, 1 cell(s)" in text


def test_a_cell_with_a_collapsed_localisation_net_is_marked():
    records = [
        record("tc", "st_cnn", "affine", 1, 3.0, profile="fast") | {"localisation_spread": [0.0]},
        record("tc", "st_cnn", "affine", 2, 1.0, profile="fast") | {"localisation_spread": [0.21]},
        record("r", "st_fcn", "affine", 1, 1.2, profile="fast") | {"localisation_spread": [0.3]},
        record("r", "fcn", None, 1, 2.0, profile="fast"),  # no transformer: no spread
    ]
    rows = {(r["data"], r["model"]): r for r in aggregate(records)}
    assert rows[("tc", "st_cnn")]["collapsed_seeds"] == 1 and rows[("r", "st_fcn")]["collapsed_seeds"] == 0
    text = to_markdown(list(rows.values()), "fast")
    assert "| 2.00 ± 1.41§ (1.7) |" in text and "| 1.20 (1.2) |" in text
    assert "§ A run of the cell (tc ST-CNN Aff (1 of 2)) ended with a localisation net" in text
    assert "collapsed_seeds" in to_csv(list(rows.values())).splitlines()[0]
    healthy = to_markdown(aggregate(records[1:]), "fast")
    assert "§" not in healthy


def test_runs_with_other_optimiser_settings_than_their_profile_are_set_apart():
    fast = {"lr": 0.1, "localisation_lr_multiplier": 0.1, "momentum": 0.9}

    def run(seed, error, **optim):
        # an older record lacks momentum: a missing key counts as the profile's
        settings = {"lr": 0.1, "localisation_lr_multiplier": 0.1} | optim
        return record("tc", "st_cnn", "affine", seed, error, profile="fast") | {
            "config": {"optim": settings},
            "localisation_spread": [0.0 if error > 2.5 else 0.2],
        }

    records = [
        run(1, 2.99),
        run(1, 1.1, localisation_lr_multiplier=0.03),
        run(2, 1.3, localisation_lr_multiplier=0.03),
    ]
    rows = aggregate(records, {("mnist", "fast", "tc-st_cnn-affine"): fast})
    # settings given for another cell do not apply to this one
    assert len(aggregate(records, {("mnist", "fast", "tc-st_fcn-affine"): fast})) == 1
    by_recipe = {r["recipe"]: r for r in rows}
    assert set(by_recipe) == {"", "localisation_lr_multiplier=0.03"}
    assert by_recipe[""]["n_seeds"] == 1 and by_recipe["localisation_lr_multiplier=0.03"]["error_mean"] == 1.2
    text = to_markdown(rows, "fast")
    assert "| 2.99§ (1.7) |" in text  # the profile's own run keeps the table cell
    assert "| TC 60x60 | ST-CNN Aff | `localisation_lr_multiplier=0.03` | 1.20 ± 0.14 | 2.99§ | 1.7 |" in text
    assert "Runs: 3 " in text
    # without the profile's settings nothing is set apart (and the two seed-1 runs are averaged)
    (mixed,) = aggregate(records)
    assert mixed["recipe"] == "" and mixed["n_seeds"] == 3
    assert "recipe" in to_csv(rows).splitlines()[0]
    # a CNN has no localisation net: a run trained under another localisation setting is the profile's own
    cnn = record("tc", "cnn", None, 1, 1.0, profile="fast") | {
        "config": {"optim": {"lr": 0.1, "localisation_lr_multiplier": 0.03}}
    }
    assert recipe_deviation(cnn, fast) == ""
    assert recipe_deviation(cnn | {"config": {"optim": {"lr": 0.05}}}, fast) == "lr=0.05"


def test_runs_shorter_or_of_another_batch_than_their_profile_are_set_apart():
    fast = {"lr": 0.1, "trainer.iterations": 15_000, "trainer.batch_size": 128}
    own = record("r", "cnn", None, 1, 1.0, profile="fast") | {"config": {"optim": {"lr": 0.1}}}
    short = own | {"seed": 2, "iterations": 300, "test_error": 5.0}
    wide = own | {"seed": 3, "batch_size": 256, "config": {"optim": {"lr": 0.2}}}
    assert recipe_deviation(own, fast) == ""
    assert recipe_deviation(short, fast) == "trainer.iterations=300"
    assert recipe_deviation(wide, fast) == "lr=0.2, trainer.batch_size=256"
    rows = aggregate([own, short, wide], {("mnist", "fast", "r-cnn-none"): fast})
    by_recipe = {r["recipe"]: r for r in rows}
    assert set(by_recipe) == {"", "trainer.iterations=300", "lr=0.2, trainer.batch_size=256"}
    assert (
        by_recipe[""]["n_seeds"] == 1 and by_recipe[""]["error_mean"] == 1.0
    )  # the short run not averaged in


def test_a_cells_runs_of_a_second_precision_are_set_apart_never_averaged():
    fast = {"lr": 0.1, "trainer.iterations": 15_000}
    old = record("r", "cnn", None, 1, 1.0, profile="fast") | {
        "config": {"optim": {"lr": 0.1}}
    }  # no autocast key: float32
    fp32 = old | {"seed": 2, "config": {"optim": {"lr": 0.1}, "trainer": {"autocast": "none"}}}

    def bf16(seed, **extra):
        config = {"optim": {"lr": 0.1}, "trainer": {"autocast": "bf16"}}
        return old | {"seed": seed, "test_error": 1.2, "config": config, **extra}

    # the precision is not a recipe: each precision alone is the cell's own run
    assert (
        recipe_deviation(old, fast) == recipe_deviation(fp32, fast) == recipe_deviation(bf16(3), fast) == ""
    )
    profiles = {("mnist", "fast", "r-cnn-none"): fast}
    rows = aggregate([old, fp32, bf16(3)], profiles)
    assert {r["recipe"]: r["n_seeds"] for r in rows} == {"": 2, "trainer.autocast=bf16": 1}
    # a tie keeps float32 (the reference) in the cell; more bfloat16 seeds make them the cell's
    rows = aggregate([old, bf16(3)], profiles)
    assert {r["recipe"]: r["error_mean"] for r in rows} == {"": 1.0, "trainer.autocast=bf16": 1.2}
    rows = aggregate([old, bf16(3), bf16(4)], profiles)
    assert {r["recipe"]: r["error_mean"] for r in rows} == {"": 1.2, "trainer.autocast=none": 1.0}
    # autocast=auto: the record's resolved precision counts, not the setting
    auto = bf16(5) | {"config": {"optim": {"lr": 0.1}, "trainer": {"autocast": "auto"}}, "precision": "bf16"}
    rows = aggregate([old, fp32, bf16(3), auto], profiles)
    assert {r["recipe"]: r["n_seeds"] for r in rows} == {"": 2, "trainer.autocast=bf16": 2}
    # a cell trained in bfloat16 alone says so in the table; one in float32 adds nothing
    assert "Trained in bfloat16 (`trainer.autocast`; float32 elsewhere): r CNN." in to_markdown(
        aggregate([bf16(3)], profiles), "fast"
    )
    assert "bfloat16" not in to_markdown(aggregate([old, fp32], profiles), "fast")


def test_addition_records_scored_on_another_test_set_are_flagged_in_table4():
    def addition(model, transform, seed, error, sha, source="mnist"):
        return record("addition", model, transform, seed, error, profile="paper") | {
            "experiment": "addition",
            "test_set": {"source": source, "sha256": sha, "size": 10_000, "generator_version": 2},
        }

    records = [
        addition("fcn", None, 1, 50.0, "today"),
        addition("cnn", None, 1, 20.0, "old"),
        addition("st_fcn", "affine", 1, 30.0, "any", source="synthetic"),
        record("r", "fcn", None, 1, 2.0, profile="paper") | {"test_set": {"source": "mnist", "sha256": "x"}},
    ]
    mark_test_set_changes(records, {"addition": "today", "r": "x"})
    assert [r["test_set_changed"] for r in records] == [False, True, None, False]
    text = addition_markdown(aggregate(records), "paper")
    assert "| FCN | 50.00 | 47.7 |" in text and "| CNN | 20.00‡ | 14.7 |" in text
    assert "‡ Scored on a test set whose sha256 differs from the one built here (addition-cnn-none" in text
    assert "not checked for 1 cell(s)" in text  # the synthetic one


def test_the_table_command_compares_records_with_the_sets_built_here(tmp_path):
    from stn_repro.data.sets import set_checksum, set_path, write_set

    images, labels = torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([1, 2, 3])
    path = set_path("r", "test", tmp_path / "data")
    path.parent.mkdir(parents=True)
    write_set(path, {"images": images, "labels": labels}, {"set_name": "r", "seed": 1})
    today = {"source": "mnist", "sha256": set_checksum(images, labels)}
    runs = write_records(
        tmp_path / "runs",
        [
            record("r", "fcn", None, 1, 2.0, profile="paper") | {"test_set": today},
            record("r", "cnn", None, 1, 1.0, profile="paper") | {"test_set": today | {"sha256": "old"}},
        ],
    )
    out = tmp_path / "results"
    args = [
        "--runs",
        str(runs),
        "--out",
        str(out),
        "--profile",
        "paper",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    assert table_main(args) == 0
    text = (out / "mnist_table1_paper.md").read_text()
    assert "| FCN | 2.00 (2.1) |" in text and "| CNN | 1.00† (1.2) |" in text


def test_the_fast_profile_is_labelled_and_reports_the_images_until_the_paper_was_reached():
    history = [
        {"iteration": 1000, "val_error": 3.0},
        {"iteration": 2000, "val_error": 2.0},  # first at or below the paper's 2.1
        {"iteration": 3000, "val_error": 1.9},
    ]
    fast = dict(profile="fast")
    records = [
        record("r", "fcn", None, 1, 2.0, **fast)
        | {"history": history, "batch_size": 128, "iterations": 3000, "wall_time_s": 180.0},
        record("r", "fcn", None, 2, 2.4, **fast)
        | {
            "history": history[:1],
            "batch_size": 128,
            "iterations": 3000,
            "wall_time_s": 180.0,
        },  # never reached
    ]
    (row,) = aggregate(records)
    assert (
        row["seeds_reaching_paper"] == 1
        and row["images_to_paper"] == 256_000
        and row["time_to_paper_s"] == 120.0
    )
    text = to_markdown([row], "fast")
    assert "FAST PROFILE, NOT THE PAPER'S PROTOCOL" in text and "REDUCED BUDGET" not in text
    assert "| r FCN | 1 of 2 | 256,000 | 0.67% | 2.0 min |" in text
    assert first_reaching(history, 1.0) is None
    # A study set has no paper number of its own: its runs are timed to the one of the set it varies (P 3.1).
    study = [record("p_4px", "fcn", None, 1, 2.0, **fast) | {"history": history, "batch_size": 128}]
    (row,) = aggregate(study)
    assert (
        row["paper_error"] is None and row["seeds_reaching_paper"] == 1 and row["images_to_paper"] == 128_000
    )
    assert "| p_4px FCN (to the paper's P number) | 1 of 1 | 128,000 |" in to_markdown([row], "fast")


def test_the_tuning_table_shows_the_varied_settings_and_validation_errors_only(tmp_path, capsys):
    from stn_analysis.tables.tuning import main as tuning_main

    def tuning_run(lr, val_errors, seed=1):
        history = [
            {"iteration": 1000 * (i + 1), "val_error": v, "test_error": 0.5} for i, v in enumerate(val_errors)
        ]
        config = {"optim": {"lr": lr, "momentum": 0.9}, "trainer": {"iterations": 2000, "num_threads": 1}}
        return record("r", "fcn", None, seed, 0.5, profile="fast") | {
            "history": history,
            "config": config,
            "paper_error": 2.1,
            "batch_size": 128,
            "images_seen": 256_000,
        }

    runs = write_records(tmp_path / "runs", [tuning_run(0.05, [3.0, 2.5]), tuning_run(0.1, [2.4, 2.0])])
    out = tmp_path / "tuning.md"
    assert tuning_main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| cell | optim.lr | images |" in text  # only the varied key; momentum and threads are the same
    assert "| r-fcn-none | 0.05 | 256,000 | 2.50 | 2.50 | 2.1 | not reached |" in text
    assert "| r-fcn-none | 0.1 | 256,000 | 2.00 | 2.00 | 2.1 | 256,000 (0.7%) |" in text
    assert "0.50" not in text  # test errors are left out
    # with several seeds each row names its seed; where the runs are scored and how often are no choice
    seeded = [tuning_run(0.05, [3.0, 2.5]), tuning_run(0.05, [2.9, 2.6], seed=2)]
    seeded[1]["config"]["trainer"] |= {"eval_every": 250, "device": "cuda"}
    runs = write_records(tmp_path / "seeded", seeded)
    assert tuning_main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| cell | seed | optim.lr | images |" not in text  # lr is the same in both: no column
    assert "| cell | seed | images |" in text and "eval_every" not in text
    assert "| r-fcn-none | 2 | 256,000 | 2.60 | 2.60 |" in text
    # A record without an optimiser key the runner defaults trained with that default (SGD's step schedule).
    cosine = tuning_run(0.05, [3.0, 2.5])
    cosine["config"]["optim"] |= {"lr_schedule": "cosine"}
    runs = write_records(tmp_path / "schedules", [cosine, tuning_run(0.05, [3.0, 2.4], seed=2)])
    assert tuning_main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| r-fcn-none | 1 | cosine |" in text and "| r-fcn-none | 2 | step |" in text
    assert "5k held-out training digits" in text  # MNIST's validation split
    empty = write_records(tmp_path / "none", [record("r", "fcn", None, 1, 2.0)])
    assert tuning_main(["--runs", str(empty), "--out", str(out)]) == 1
    assert "no finished runs with a validation history" in capsys.readouterr().err


def test_every_experiment_the_tables_flag_by_test_set_can_be_rescored():
    assert set(LOADERS) == set(STORED_TEST_SET_EXPERIMENTS)


def test_each_profile_optimiser_settings_come_from_its_trainer_config():
    from stn_analysis.bookkeeping.recipes import profile_optims

    def run(profile, cell, experiment="mnist"):
        return {"profile": profile, "experiment": experiment, "config": {"cell": cell}}

    records = [
        run("fast", "r-st_cnn-affine"),
        run("fast", "tc-st_cnn-affine"),
        run("paper", "tc-st_cnn-affine"),
    ]
    optims = profile_optims("mnist", [*records, run("no_such_profile", "r-fcn-none")])
    assert set(optims) == {
        ("mnist", "fast", "r-st_cnn-affine"),
        ("mnist", "fast", "tc-st_cnn-affine"),
        ("mnist", "paper", "tc-st_cnn-affine"),
    }
    assert optims[("mnist", "fast", "r-st_cnn-affine")]["localisation_lr_multiplier"] == 0.1
    # fast gives the TC cells' localisation nets a lower lr of their own (trainer.localisation_lr_multiplier_by_cell)
    assert optims[("mnist", "fast", "tc-st_cnn-affine")]["localisation_lr_multiplier"] == 0.01
    assert optims[("mnist", "paper", "tc-st_cnn-affine")]["lr"] == 0.01
    assert optims[("mnist", "paper", "tc-st_cnn-affine")]["nesterov"] is False
    cub = profile_optims("cub", [run("quick", "cub224-cnn", "cub"), run("paper", "cub224-cnn", "cub")])
    assert (
        cub[("cub", "quick", "cub224-cnn")] != cub[("cub", "paper", "cub224-cnn")]
    )  # configs/profile/cub/quick.yaml sets its own optimiser
    assert set(profile_optims("svhn", [run("quick", "svhn64-svhn_cnn", "svhn")])) == {
        ("svhn", "quick", "svhn64-svhn_cnn")
    }
    # co-localisation compares the length only (a second precision is set apart by aggregate, not here)
    assert profile_optims("coloc", [run("paper", "coloc_t-digit3", "coloc")]) == {
        ("coloc", "paper", "coloc_t-digit3"): {"trainer.iterations": 2000, "trainer.batch_size": 100}
    }
    # a record of the cell trained at the profile's TC value is the profile's own; at 0.1 it is set apart
    tc = record("tc", "st_cnn", "affine", 1, 1.5, profile="fast")
    own = tc | {
        "config": {"cell": "tc-st_cnn-affine", "optim": dict(optims[("mnist", "fast", "tc-st_cnn-affine")])}
    }
    other = own | {
        "config": {
            "cell": "tc-st_cnn-affine",
            "optim": own["config"]["optim"] | {"localisation_lr_multiplier": 0.1},
        }
    }
    rows = aggregate([own, other], optims)
    assert sorted(r["recipe"] for r in rows) == ["", "localisation_lr_multiplier=0.1"]


def test_the_table_names_the_cells_with_fewer_seeds_than_the_rest():
    records = [record("r", "fcn", None, seed, 2.0, profile="fast") for seed in (1, 2, 3)]
    records += [record("tc", "cnn", None, 1, 1.0, profile="fast")]
    text = to_markdown(aggregate(records), "fast")
    assert "- Cells with fewer than 3 seeds: tc CNN (1)." in text
    assert "fewer than" not in to_markdown(aggregate(records[:3]), "fast")


def test_the_collapse_note_says_when_one_of_several_transformers_is_fixed():
    from stn_analysis.tables.markdown import _collapse_lines

    def row(model, label):
        return {
            "data": "synthetic-svhn64",
            "label": label,
            "model": model,
            "collapsed_seeds": 1,
            "n_seeds": 3,
        }

    single = _collapse_lines([row("st_cnn_single", "ST-CNN Single")])[-1]
    assert "(synthetic-svhn64 ST-CNN Single (1 of 3))" in single
    assert single.endswith("fixed warp and the number is not a spatial transformer's.")
    multi = _collapse_lines([row("st_cnn_multi", "ST-CNN Multi")])[-1]
    assert multi.endswith("one of its four transformers, the others may still move.")
    assert _collapse_lines([row("st_cnn_multi", "ST-CNN Multi") | {"collapsed_seeds": 0}]) == []
