"""The runs a table lacks: every (cell, seed) without a finished record, named by overrides that compose
to that very cell; checkpoints are reported as where the run resumes; bad input is refused."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.addition import spec_from_config
from experiments.coloc import specs_from_config
from experiments.mnist import cell_from_config
from stn_analysis.bookkeeping.missing import MissingRun, main, missing_runs, table_cells

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_record(folder: Path, cell: str, seed: int, finished: bool) -> None:
    seed_dir = folder / cell / f"seed{seed}"
    seed_dir.mkdir(parents=True)
    (seed_dir / "record.json").write_text(json.dumps({"cell": cell, "seed": seed, "finished": finished}))


def test_table_cells_are_table_1_with_tc_and_tables_4_and_5():
    mnist = [cell for cell, _ in table_cells("mnist")]
    assert len(mnist) == 36 and len(set(mnist)) == 36
    assert mnist[0] == "r-fcn-none" and "tc-st_cnn-affine" in mnist and "tc-st_fcn-tps" not in mnist
    addition = [cell for cell, _ in table_cells("addition")]
    assert addition == [
        "addition-fcn-none",
        "addition-cnn-none",
        "addition-st_fcn-affine",
        "addition-st_fcn-projective",
        "addition-st_fcn-tps",
        "addition-2x_st_fcn-affine",
        "addition-2x_st_fcn-projective",
        "addition-2x_st_fcn-tps",
    ]
    coloc = [cell for cell, _ in table_cells("coloc")]
    assert len(coloc) == 20 and coloc[0] == "coloc_t-digit0" and coloc[-1] == "coloc_tc-digit9"


SPEC_FROM_CONFIG = {
    "mnist": lambda cfg: cell_from_config(cfg)[0],
    "addition": lambda cfg: spec_from_config(cfg)[0],
    "coloc": lambda cfg: specs_from_config(cfg)[0],
}


@pytest.mark.parametrize("experiment", ["mnist", "addition", "coloc"])
def test_each_cells_queue_line_composes_to_that_cell(experiment):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for cell, overrides in table_cells(experiment):
            runner, *line = MissingRun(experiment, cell, 2, overrides).queue_line("fast").split()
            cfg = compose(runner, overrides=[*line, "trainer.device=cpu"])
            spec = SPEC_FROM_CONFIG[experiment](cfg)
            assert (spec.cell, spec.seed, spec.profile) == (cell, 2, "fast")


def test_finished_records_in_any_folder_count_and_unfinished_ones_do_not(tmp_path):
    committed, runs = tmp_path / "records", tmp_path / "runs"
    write_record(committed, "r-fcn-none", 1, finished=True)
    write_record(runs, "r-fcn-none", 2, finished=True)
    write_record(runs, "rts-fcn-none", 1, finished=False)
    torch.save(
        {"iteration": 1234, "settings": {"iterations": 15000}}, runs / "rts-fcn-none/seed1/checkpoint.pt"
    )
    missing = missing_runs("mnist", [1, 2], [committed, runs, tmp_path / "absent"])
    assert len(missing) == 36 * 2 - 2
    assert [(m.cell, m.seed) for m in missing[:3]] == [
        ("rts-fcn-none", 1),
        ("rts-fcn-none", 2),
        ("p-fcn-none", 1),
    ]
    assert missing[0].resumes_at == 1234 and missing[1].resumes_at is None
    assert missing[0].queue_line("fast") == "mnist data=rts model=fcn transformer=none profile=fast seed=1"
    assert missing[0].command("fast") == f"python -m experiments.{missing[0].queue_line('fast')}"


def test_the_command_line_prints_queue_lines_and_refuses_bad_input(tmp_path, capsys):
    write_record(tmp_path, "addition-fcn-none", 1, finished=True)
    assert (
        main(
            [
                "--experiment",
                "addition",
                "--profile",
                "paper",
                "--seeds",
                "1",
                "--records",
                str(tmp_path),
                "--queue",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[0] == "addition model=addition_cnn transformer=none profile=paper seed=1"
    assert main(["--seeds", "1,x", "--records", str(tmp_path)]) == 1
    assert "not a comma-separated list of integers" in capsys.readouterr().err
    assert main(["--seeds", "0", "--records", str(tmp_path)]) == 1
    assert "positive integers" in capsys.readouterr().err
    write_record(tmp_path, "r-fcn-none", 1, finished=True)
    (tmp_path / "r-fcn-none/seed1/record.json").write_text("{broken")
    assert main(["--seeds", "1", "--records", str(tmp_path)]) == 1
    assert "r-fcn-none/seed1/record.json" in capsys.readouterr().err


def test_coloc_runs_and_the_state_of_their_embedding(tmp_path, capsys, monkeypatch):
    from stn_analysis.bookkeeping import missing

    monkeypatch.setattr(missing, "PROJECT_ROOT", tmp_path)  # where committed records would be
    monkeypatch.setattr(missing, "RECORDS", tmp_path / "results" / "records")
    runs = tmp_path / "runs"
    monkeypatch.setenv("STN_RUNS", str(runs))
    write_record(runs / "coloc" / "paper", "coloc_t-digit3", 1, finished=True)
    records = ["--records", str(runs / "coloc" / "paper")]
    # The default e() is a finished Table 1 CNN run (configs/embedding/table1.yaml): its state, nothing to train.
    assert main(["--experiment", "coloc", "--seeds", "1", *records]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[1] == "  embedding e(), the Table 1 CNN run: results/records/mnist_fast/p-cnn-none/seed1 finished"
    )
    # embedding=plain: a run the first job trains, and its progress.
    monkeypatch.setattr(
        missing,
        "coloc_embedding_dir",
        lambda profile: ("plain", runs / "coloc" / "embedding" / profile / "mnist" / "seed1"),
    )
    embedding = runs / "coloc" / "embedding" / "paper" / "mnist" / "seed1"
    embedding.mkdir(parents=True)
    torch.save({"iteration": 26335, "settings": {"iterations": 150000}}, embedding / "checkpoint.pt")
    assert main(["--experiment", "coloc", "--seeds", "1", *records]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("coloc, profile paper, seeds 1: 19 run(s)")
    assert out[1].endswith("seed1 resumes at iteration 26,335 of 150,000")
    assert out[2] == "  python -m experiments.coloc data=coloc_t digit=0 profile=paper seed=1"
    assert "data=coloc_t digit=3 " not in "\n".join(out) and "data=coloc_tc digit=3 " in "\n".join(out)
    # A committed finished e() is offered while the local one is not finished.
    committed = tmp_path / "results" / "records" / "coloc_paper" / "embedding"
    committed.mkdir(parents=True)
    (committed / "record.json").write_text(json.dumps({"cell": "mnist-embedding-cnn", "finished": True}))
    assert main(["--experiment", "coloc", "--seeds", "1", *records]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == (
        "  (or add embedding.run_dir=results/records/coloc_paper/embedding to each: the committed e(), trained once)"
    )
    # With no run missing, e()'s state is not printed at all.
    for cell in [f"coloc_{s}-digit{d}" for s in ("t", "tc") for d in range(10)]:
        if cell != "coloc_t-digit3":
            write_record(runs / "coloc" / "paper", cell, 1, finished=True)
    assert main(["--experiment", "coloc", "--seeds", "1", *records]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"coloc, profile paper, seeds 1: 0 run(s) without a finished record in {runs / 'coloc' / 'paper'}"
    ]
    assert (
        main(["--experiment", "coloc", "--profile", "fastest", "--records", str(runs / "coloc" / "paper")])
        == 1
    )
    err = capsys.readouterr().err
    assert "no coloc profile 'fastest'" in err and "known: fast, paper, quick, smoke" in err
    assert main(["--profile", "cub_paper", "--queue", "--records", str(tmp_path)]) == 1
    assert "no mnist profile 'cub_paper'" in capsys.readouterr().err


def test_a_run_finished_with_other_optimiser_settings_is_not_the_profiles(tmp_path, capsys):
    from stn_analysis.bookkeeping.recipes import profile_optims

    cell = "tc-st_cnn-affine"
    fast = profile_optims("mnist", [{"profile": "fast", "cell": cell}])[("mnist", "fast", cell)]
    for seed, multiplier in [(1, fast["localisation_lr_multiplier"]), (2, 0.1)]:
        seed_dir = tmp_path / cell / f"seed{seed}"
        seed_dir.mkdir(parents=True)
        optim = fast | {"localisation_lr_multiplier": multiplier}
        record = {
            "cell": cell,
            "seed": seed,
            "finished": True,
            "transform": "affine",
            "config": {"optim": optim},
        }
        (seed_dir / "record.json").write_text(json.dumps(record))
    assert main(["--profile", "fast", "--seeds", "1,2", "--records", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "data=tc model=st_cnn" in line]
    assert len(lines) == 1 and "seed=2" in lines[0]
    assert "finished with other settings (localisation_lr_multiplier=0.1): move it aside" in lines[0]
    # A run of the profile's settings cut short (trainer.iterations=...) is not the profile's either.
    short = json.loads((tmp_path / cell / "seed1" / "record.json").read_text()) | {"iterations": 100}
    (tmp_path / cell / "seed1" / "record.json").write_text(json.dumps(short))
    assert main(["--profile", "fast", "--seeds", "1", "--records", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "data=tc model=st_cnn" in line]
    assert len(lines) == 1 and "finished with other settings (trainer.iterations=100)" in lines[0]
