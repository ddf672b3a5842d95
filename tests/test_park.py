"""Parking unfinished runs: a run stopped in one session, parked, restored into an empty runs folder and
relaunched ends exactly where an uninterrupted run ends, and its record names both launches."""

import json
import shutil

import pytest
import torch
from torch import nn

from stn_analysis.bookkeeping.park import (
    PARKED_NAME,
    launch_command,
    park,
    parked_runs,
    unfinished_runs,
    unpark,
)
from stn_analysis.bookkeeping.park import main as park_main
from stn_repro.training.checkpoints import CHECKPOINT_NAME
from stn_repro.training.loop import train
from stn_repro.training.records import write_record
from stn_repro.training.run_folder import LOCK_NAME, RunLock
from stn_repro.training.settings import TrainSettings


class Stream:
    """A seeded, resumable stream: the label is whether the mean of a noise vector is positive."""

    def __init__(self, seed=0):
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self):
        x = torch.randn(16, 6, generator=self.generator)
        return x, (x.mean(1) > 0).long()

    def state_dict(self):
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["rng"])


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


SETTINGS = dict(iterations=10, lr=0.1, lr_step_every=4, log_every=2, eval_every=5, checkpoint_every=3)
EVAL = {"test": Stream(seed=9).next_batch()}


def run(run_dir, **extra):
    net = model(seed=extra.pop("model_seed", 0))
    result = train(
        net, Stream(), EVAL, TrainSettings(**SETTINGS, **extra), run_dir, batch_size=16, log=lambda s: None
    )
    return net, result


def test_a_parked_run_restored_into_an_empty_runs_folder_resumes_to_the_uninterrupted_state(tmp_path, capsys):
    straight, straight_result = run(tmp_path / "straight")

    runs, parked = tmp_path / "runs", tmp_path / "parked"
    run_dir = runs / "mnist" / "fast" / "r-fcn-none" / "seed1"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- experiment=r_fcn\n- seed=1\n")
    _, first = run(run_dir, stop_after=7)
    assert not first.finished

    lines = []
    entries = park(runs, parked, log=lines.append)
    assert [str(e.relative) for e in entries] == ["mnist/fast/r-fcn-none/seed1"]
    assert entries[0].info["iteration"] == 7 and entries[0].info["iterations"] == 10
    assert entries[0].command == "python -m experiments.mnist experiment=r_fcn seed=1"
    assert "parked at iteration 7 of 10" in lines[0]
    assert park_main(["list", "--parked", str(parked)]) == 0
    assert (
        "mnist/fast/r-fcn-none/seed1 (iteration 7 of 10): python -m experiments.mnist"
        in capsys.readouterr().out
    )

    shutil.rmtree(runs)  # the next session: a fresh machine without the runs folder
    restored = unpark(runs, parked, log=lambda s: None)
    assert [e.relative for e in restored] == [entries[0].relative]
    # Parked again before a relaunch (the restored folder has no Hydra overrides): the command is kept.
    assert park(runs, parked, log=lambda s: None)[0].command == entries[0].command
    resumed, result = run(run_dir, model_seed=123)
    assert result.finished and result.history == straight_result.history
    assert [launch["iteration"] for launch in result.launches] == [0, 7]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_park_drops_finished_runs_and_unpark_leaves_a_further_checkpoint_alone(tmp_path):
    runs, parked = tmp_path / "runs", tmp_path / "parked"
    run(runs / "a" / "seed1", stop_after=3)
    run(runs / "b" / "seed1", stop_after=6)
    assert [p.name for p in unfinished_runs(runs)] == ["seed1", "seed1"]
    park(runs, parked, log=lambda s: None)
    assert {str(e.relative) for e in parked_runs(parked)} == {"a/seed1", "b/seed1"}

    write_record(runs / "a" / "seed1" / "record.json", {"finished": True, "cell": "a", "seed": 1})
    lines = []
    park(runs, parked, log=lines.append)
    assert [str(e.relative) for e in parked_runs(parked)] == ["b/seed1"]
    assert any("a/seed1: finished" in line for line in lines)

    run(runs / "b" / "seed1", stop_after=2)  # the run folder went on to iteration 8 meanwhile
    lines = []
    unpark(runs, parked, log=lines.append)
    assert torch.load(runs / "b" / "seed1" / CHECKPOINT_NAME, weights_only=False)["iteration"] == 8
    assert "as far on; kept" in lines[0]


def test_park_warns_about_a_run_still_in_training(tmp_path):
    runs, parked = tmp_path / "runs", tmp_path / "parked"
    run_dir = runs / "x" / "seed1"
    run(run_dir, stop_after=3)
    lines = []
    with RunLock(run_dir, log=lambda s: None):
        park(runs, parked, log=lines.append)
    assert "still training" in lines[0] and (parked / "x" / "seed1" / CHECKPOINT_NAME).is_file()
    assert (run_dir / LOCK_NAME).exists()


def test_an_incomplete_parked_copy_is_a_clear_error(tmp_path, capsys):
    broken = tmp_path / "parked" / "x" / "seed1"
    broken.mkdir(parents=True)
    (broken / PARKED_NAME).write_text(json.dumps({"iteration": 3}))
    assert park_main(["restore", "--runs", str(tmp_path / "runs"), "--parked", str(tmp_path / "parked")]) == 1
    assert "no checkpoint.pt" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="incomplete"):
        parked_runs(tmp_path / "parked")


def test_the_launch_command_of_a_run_in_a_nested_runs_folder_sets_stn_runs(tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "study" / "mnist" / "fast" / "tc-st_cnn-affine" / "seed1"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- experiment=tc_st_cnn_affine\n- seed=1\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: mnist\n")
    assert launch_command(run_dir, runs) == (
        f"STN_RUNS={runs / 'study'} python -m experiments.mnist experiment=tc_st_cnn_affine seed=1"
    )
    # Without hydra.yaml the first folder names the task, as for a run launched before this was kept.
    (run_dir / ".hydra" / "hydra.yaml").unlink()
    assert launch_command(run_dir, runs).startswith("python -m experiments.study ")
    assert launch_command(run_dir, runs / "study") == (
        "python -m experiments.mnist experiment=tc_st_cnn_affine seed=1"
    )
