"""Weights in git: a committed ``model.pt`` must be needed by a committed result (the rule in
stn_analysis/bookkeeping/weights.py); run records are always committed."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stn_analysis.bookkeeping.weights import weights_needs

ROOT = Path(__file__).resolve().parents[1]


def record(folder: Path, **fields) -> None:
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(fields))
    (folder / "model.pt").write_bytes(b"weights")


def test_the_rule_keeps_named_rescored_and_starting_weights_and_nothing_else(tmp_path):
    records = tmp_path / "results" / "records"
    record(records / "mnist_fast" / "p-cnn-none" / "seed1")
    record(records / "mnist_fast" / "r-cnn-none" / "seed1", rescored=[{"test_error": 1.0}])
    record(records / "mnist_fast" / "e-cnn-none" / "seed1")
    record(records / "cub_quick" / "cub224-cnn" / "seed2")
    record(records / "cub_quick" / "cub448-st_cnn_2x" / "seed2", config={"trainer": {"st_init": "cnn"}})
    (tmp_path / "results" / "analysis.md").write_text(
        "Made by `stn-rescore results/records/mnist_fast/p-cnn-none/seed1` and records/cub_quick/cub448-st_cnn_2x.\n"
    )
    files = [str(p.relative_to(tmp_path)) for p in sorted(records.rglob("model.pt"))]
    needs = {
        str(Path(f).parent.relative_to("results/records")): why
        for f, why in weights_needs(tmp_path, files).items()
    }
    assert needs == {
        "cub_quick/cub224-cnn/seed2": "the CNN a committed ST-CNN run started from",
        "cub_quick/cub448-st_cnn_2x/seed2": "named by a result file",
        "mnist_fast/e-cnn-none/seed1": None,
        "mnist_fast/p-cnn-none/seed1": "named by a result file",
        "mnist_fast/r-cnn-none/seed1": "rescored on a later test set",
    }


def test_every_committed_weights_file_is_needed_by_a_committed_result():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: which files are committed is unknown")
    listed = subprocess.run(
        ["git", "ls-files", "results/records"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    weights = [f for f in listed if f.endswith(".pt")]
    unneeded = [f for f, why in weights_needs(ROOT, weights).items() if why is None]
    assert not unneeded, f"committed weights no result needs (drop them: git rm --cached): {unneeded[:5]}"
