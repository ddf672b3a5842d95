"""What a new user meets first: tables that never lose committed cells, a plan (with its time) before a long
reproduction, a run's log file, no stub folders from failed launches, progress in a sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stn_analysis.bookkeeping import plan
from stn_analysis.tables import cli as table_cli
from stn_analysis.tables.committed import COMMITTED_TABLES
from stn_analysis.tables.write import TableWouldLoseCells, publish_table
from stn_repro.data.sets import stored_set_checksum
from stn_repro.training.learners import SingleModel
from stn_repro.training.loop import run_training
from stn_repro.training.settings import SpeedSettings, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


# --- tables -------------------------------------------------------------------------------------------------


def test_a_table_with_fewer_cells_never_replaces_one_with_more(tmp_path):
    full = "| R | 1.0 (1.2) | 2.0 (2.1) |\n"
    partial = "| R | 1.0 (1.2) | not run (2.1) |\n"
    publish_table(tmp_path, "t", "a,b\n1,2\n", full)
    with pytest.raises(TableWouldLoseCells, match=r"t\.md has 0 cell\(s\) not run, the table made now 1"):
        publish_table(tmp_path, "t", "a\n1\n", partial)
    assert (tmp_path / "t.md").read_text() == full and (tmp_path / "t.csv").read_text() == "a,b\n1,2\n"
    publish_table(tmp_path, "t", "a\n1\n", partial, force=True)  # asked for
    assert (tmp_path / "t.md").read_text() == partial
    publish_table(tmp_path, "t", "a,b\n1,2\n", full)  # more cells: always fine
    assert (tmp_path / "t.md").read_text() == full


def test_the_table_command_writes_ones_own_runs_to_the_runs_folder_never_to_results(
    tmp_path, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    monkeypatch.setenv("STN_RUNS", str(runs))
    # One finished quick run of one cell: a table with one cell and 35 "not run".
    quick = ROOT / "results" / "records" / "mnist_quick" / "r-fcn-none" / "seed1"
    target = runs / "mnist" / "quick" / "r-fcn-none" / "seed1"
    target.mkdir(parents=True)
    (target / "record.json").write_text((quick / "record.json").read_text())
    before = (ROOT / "results" / "mnist_table1_quick.md").read_text()
    assert table_cli.main(["--profile", "quick", "--quiet", "--data-dir", str(tmp_path / "no-data")]) == 0
    made = (runs / "tables" / "mnist_table1_quick.md").read_text()
    assert made.count("not run") > before.count("not run")
    assert (ROOT / "results" / "mnist_table1_quick.md").read_text() == before  # the committed one untouched
    # Pointed at results/ by hand, it refuses with one line instead of losing the committed cells.
    copy = tmp_path / "results"
    copy.mkdir()
    (copy / "mnist_table1_quick.md").write_text(before)
    args = ["--profile", "quick", "--quiet", "--out", str(copy), "--data-dir", str(tmp_path / "no-data")]
    assert table_cli.main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "would lose cells" in error[0] and "make tables" in error[0]
    assert (copy / "mnist_table1_quick.md").read_text() == before


def test_every_committed_table_is_registered():
    made = {
        "mnist": {
            "fast": ["mnist_table1_fast"],
            "paper": ["mnist_table1_paper", "mnist_table1_paper_width_ranges"],
        },
        # The records of the suite's first e() (a CNN on undistorted digits) make their own tables.
        "coloc": {
            "fast": ["coloc_table5_fast_plain_e"],
            "paper": ["coloc_table5_paper_plain_e", "coloc_table5_paper"],
        },
    }
    stems = set()
    for table in COMMITTED_TABLES:
        names = made.get(table.experiment, {}).get(table.profile)
        prefix = {"mnist": "mnist_table1", "addition": "addition_table4", "coloc": "coloc_table5"}
        prefix |= {"svhn": "svhn_table2", "cub": "cub_table3"}
        stems |= set(names or [f"{prefix[table.experiment]}_{table.profile}"])
    committed = {p.stem.removesuffix("_synthetic") for p in (ROOT / "results").glob("*_table[0-9]_*.md")}
    assert committed == stems


@pytest.mark.real_data
def test_every_committed_table_is_what_its_records_make_byte_for_byte(capsys):
    # Needs the stored test sets built here (`make data-mnist`): the tables flag records scored on other ones.
    if stored_set_checksum("r", "test") is None:
        pytest.skip("no stored MNIST sets here (make data-mnist): the tables compare records with them")
    assert table_cli.main(["--committed", "--check"]) == 0, capsys.readouterr().err
    assert "24 of 24 committed table files are what their records make" in capsys.readouterr().out


# --- the plan before a reproduction -----------------------------------------------------------------------------


def test_the_plan_expands_sweeps_as_hydra_does():
    jobs = plan.expand([["data=r,rts", "model=fcn,cnn", "seed=1,2,3"], ["data=tc", "model=st_fcn", "seed=1"]])
    assert len(jobs) == 13 and jobs[0] == ["data=r", "model=fcn", "seed=1"] and jobs[-1][0] == "data=tc"


def test_the_paper_protocol_on_a_cpu_waits_for_a_confirmation(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STN_RUNS", str(tmp_path))
    cell = ["profile=paper", "data=r", "model=fcn", "transformer=none", "seed=1", "trainer.device=cpu"]
    monkeypatch.setattr(plan, "PAPER_ON_CPU_LIMIT_H", 0.0)  # any estimate is "too long" for this test
    assert plan.main(["mnist", *cell]) == plan.REFUSED
    out, err = capsys.readouterr()
    assert "mnist, profile paper: 1 run(s) (1 cell(s), seeds 1); 0 finished" in out
    assert "estimated training time on this machine (CPU" in out
    assert "PROFILE=fast" in err and "CONFIRM=1" in err
    assert plan.main(["mnist", *cell, "--confirm"]) == 0
    # Another profile is never held back.
    monkeypatch.setattr(plan, "PAPER_ON_CPU_LIMIT_H", 24.0)
    assert plan.main(["mnist", "profile=smoke", "data=r,rts", "model=fcn", "transformer=none"]) == 0
    assert "2 run(s)" in capsys.readouterr().out


def test_a_bad_override_in_a_plan_is_one_line(capsys):
    assert plan.main(["mnist", "data=nope"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- a run's output -------------------------------------------------------------------------------------------


def test_a_progress_bar_with_rate_and_time_left_when_asked(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))

    class Stream:
        def next_batch(self):
            return torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,))

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    settings = TrainSettings(iterations=20, log_every=10, eval_every=0, checkpoint_every=0, progress_bar=True)
    learner = SingleModel(model, Stream(), settings, SpeedSettings(), batch_size=8)
    eval_sets = {"test": (torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))}
    run_training(learner, eval_sets, settings, tmp_path)
    err = capsys.readouterr().err
    assert "it/s" in err and "20/20" in err
    # Off (the default, and `auto` when the output is not a terminal): the log lines only.
    run_training(learner, eval_sets, TrainSettings(iterations=30, log_every=10, eval_every=0), tmp_path / "b")
    assert "it/s" not in capsys.readouterr().err


def runner(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "STN_RUNS": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "experiments.mnist", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


SMOKE = ["profile=smoke", "data.source=synthetic", "logger=none", "model=fcn", "transformer=none", "data=r"]


def test_a_launch_that_fails_before_training_leaves_no_folder(tmp_path):
    result = runner([*SMOKE, "data.source=mnist"], tmp_path, STN_DATA=str(tmp_path / "no-data"))
    assert result.returncode == 1 and "make data-mnist" in result.stderr
    assert not (tmp_path / "runs" / "mnist").exists()


def test_the_log_file_holds_what_the_terminal_showed_and_a_sweep_counts_its_runs(tmp_path):
    result = runner(["-m", *SMOKE, "seed=1,2"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "[run 1 of 2] r-fcn-none seed 1" in result.stderr
        and "[run 2 of 2] r-fcn-none seed 2" in result.stderr
    )
    log = (tmp_path / "runs" / "mnist" / "smoke" / "r-fcn-none" / "seed2" / "mnist.log").read_text()
    assert "r-fcn-none seed 2: % test error" in log and "train iter" in log
    assert "r-fcn-none seed 2: % test error" in result.stdout
