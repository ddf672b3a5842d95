"""Scoring runs on their validation and test digits undistorted (stn_repro.val_vs_test)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from stn_analysis.diagnostics.val_vs_test import centred, distortion_draws, main, markdown, plain_digit_errors
from stn_repro.data.mnist import fetch_mnist
from stn_repro.data.sets import write_set

ROOT = Path(__file__).resolve().parents[1]
R_FCN_RUN = ROOT / "results" / "records" / "mnist_fast" / "r-fcn-none" / "seed1"


def test_centred_puts_each_digit_in_the_middle_of_the_canvas():
    digits = (
        torch.arange(2 * 28 * 28, dtype=torch.int64).reshape(2, 28, 28).remainder(255).add(1).to(torch.uint8)
    )
    out = centred(digits, 42)
    assert out.shape == (2, 1, 42, 42) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0, 7:35, 7:35], digits)
    assert out.sum() == digits.sum()  # nothing but the digit: the margins are black
    assert torch.equal(centred(digits, 28)[:, 0], digits)  # the digits' own size: unchanged
    odd = centred(digits, 29)
    assert torch.equal(odd[:, 0, :28, :28], digits) and odd[:, 0, 28].sum() == 0  # the extra row goes after


def test_centred_rejects_what_it_cannot_place():
    with pytest.raises(ValueError, match="cannot hold"):
        centred(torch.zeros(1, 28, 28, dtype=torch.uint8), 20)
    with pytest.raises(ValueError, match="uint8"):
        centred(torch.zeros(1, 28, 28), 42)


def test_markdown_gives_each_sets_mean_gaps():
    rows = [
        {"cell": "r-fcn-none", "set": "r", "seed": 1, "val_error": 2.0, "test_error": 1.5,
         "plain_val_error": 1.2, "plain_test_error": 1.0, "val_size": 5000, "test_size": 10000},
        {"cell": "r-fcn-none", "set": "r", "seed": 2, "val_error": 2.2, "test_error": 2.0,
         "plain_val_error": 0.9, "plain_test_error": 1.0, "val_size": 5000, "test_size": 10000},
        {"cell": "p-cnn-none", "set": "p", "seed": 1, "val_error": 10.0, "test_error": 10.0,
         "plain_val_error": 0.5, "plain_test_error": 0.25, "val_size": 100, "test_size": 900},
    ]  # fmt: skip
    draws = {"r": {"size_name": "|angle| (deg)", "val": 44.6, "test": 45.1, "z": -1.04}, "p": None}
    text = markdown(rows, "stn-val-vs-test x", "commit abc", draws)
    assert "| r | 2 | +0.35 | 0.24 | +0.05 | 1 of 2 | 44.6 / 45.1 (-1.0), |angle| (deg) |" in text
    # 10% on 100 and 900 images: sqrt(900 / 100 + 900 / 900) = sqrt(10) = 3.16.
    assert "| p | 1 | +0.00 | 3.16 | +0.25 | 1 of 1 | - |" in text
    assert "| r-fcn-none seed 2 | 2.20 | 2.00 | 0.90 | 1.00 |" in text
    assert "stn-val-vs-test x` (commit abc)" in text


@pytest.mark.real_data
def test_a_committed_run_is_scored_on_its_plain_digits(tmp_path, real_mnist):
    if not (R_FCN_RUN / "model.pt").is_file():
        pytest.skip(f"no committed weights at {R_FCN_RUN}")
    fetch_mnist(tmp_path, real_mnist)
    row = plain_digit_errors(R_FCN_RUN, tmp_path)
    record = json.loads((R_FCN_RUN / "record.json").read_text())
    assert (row["val_error"], row["test_error"]) == (record["val_error"], record["test_error"])
    assert (row["val_size"], row["test_size"]) == (5000, 10000)
    # An FCN trained on rotated digits reads upright ones about as well: a broken placement or scale would not.
    assert 0 < row["plain_val_error"] < 5 and 0 < row["plain_test_error"] < 5
    run = tmp_path / "no_val"
    shutil.copytree(R_FCN_RUN, run)
    record["val_error"] = None
    (run / "record.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="held no validation digits out"):
        plain_digit_errors(run, tmp_path)
    # The command: every run folder below --records, one table; without the stored sets, an error line.
    records = tmp_path / "records"
    shutil.copytree(R_FCN_RUN, records / "r-fcn-none" / "seed1")
    out = tmp_path / "val_vs_test.md"
    assert main(["--records", str(records), "--out", str(out), "--data-dir", str(tmp_path)]) == 1
    assert not out.exists()
    write_r_sets(tmp_path)
    assert main(["--records", str(records), "--out", str(out), "--data-dir", str(tmp_path)]) == 0
    text = out.read_text()
    assert "| r | 1 |" in text and "25 / 15 (+1.2)" in text and f"--records {records}" in text
    assert main([str(run), "--data-dir", str(tmp_path)]) == 1  # the run without validation: an error line


def test_the_command_needs_some_runs():
    with pytest.raises(SystemExit):
        main([])


def write_r_sets(data_dir):
    """Tiny stored R val and test sets: only their rotation angles are read here."""
    for split, angles in (("val", [10.0, -20.0, 30.0, 40.0]), ("test", [10.0, -20.0])):
        count = len(angles)
        data = {
            "images": torch.zeros(count, 1, 28, 28, dtype=torch.uint8),
            "labels": torch.zeros(count, dtype=torch.int64),
            "angle_deg": torch.tensor(angles),
        }
        write_set(data_dir / "mnist_sets" / f"r_{split}.h5", data, {"set_name": "r", "seed": 0})


def test_distortion_draws_compare_the_two_stored_sets(tmp_path):
    write_r_sets(tmp_path)
    draw = distortion_draws("r", tmp_path)
    # |angles|: val mean 25 (sample variance 500/3), test 15 (variance 50); se = sqrt(500/12 + 50/2).
    assert (draw["val"], draw["test"]) == (25.0, 15.0)
    assert draw["z"] == pytest.approx(10 / (500 / 12 + 25) ** 0.5)
    assert distortion_draws("tc", tmp_path) is None  # tc only translates
