"""Run-record provenance: the commit that ran is named, also from a copy of the tree without .git."""

import os
import platform
import re
from pathlib import Path

import torch

from stn_repro.training import records
from stn_repro.training.checkpoints import save_checkpoint
from stn_repro.training.records import git_commit, provenance, write_record
from stn_repro.training.settings import cpu_model


def test_the_commit_of_this_checkout_is_a_hash():
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", git_commit())


def test_the_code_commit_is_the_one_found_when_the_process_first_asked(monkeypatch):
    first = git_commit()
    # The work tree moved on while a run trained: the run still names the code it imported.
    monkeypatch.setattr(records, "_commit_of", lambda repo: "f" * 40)
    assert git_commit() == first != "f" * 40
    assert git_commit(Path(".")) == "f" * 40  # an explicit repo is asked afresh


def test_a_tree_without_git_names_the_given_commit_or_says_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv("STN_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.setenv("STN_COMMIT", "0123abc")
    assert git_commit(tmp_path) == "0123abc (given by STN_COMMIT; no git checkout)"


def test_provenance_names_the_device_and_the_cpu_instructions():
    record = provenance(torch.device("cpu"))
    threads = torch.get_num_threads()
    assert (
        record["device"] == f"cpu ({cpu_model()}, {threads} threads)" and record["torch"] == torch.__version__
    )
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""


def test_the_cpu_is_named_by_its_model_so_that_records_from_two_machines_tell_apart(tmp_path):
    # Two CPUs of the same architecture train at speeds 1.5-2.4x apart (docs/speed.md): a record names which.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512_bf16\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 9R14"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu\n")  # no model line (some virtual machines)
    assert cpu_model(cpuinfo) == (platform.processor() or platform.machine())
    assert cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())  # not Linux


def test_records_and_checkpoints_get_the_umasks_permissions_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        write_record(tmp_path / "record.json", {"finished": True})
        save_checkpoint(tmp_path / "checkpoint.pt", {"x": torch.zeros(1)})
    finally:
        os.umask(umask)
    for name in ("record.json", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_run_commits_names_every_launch_that_trained_a_run():
    from stn_repro.training.records import run_commits

    record = {
        "commit": "b" * 40,
        "launches": [
            {"iteration": 0, "commit": "not recorded"},
            {"iteration": 5000, "commit": "a" * 40 + "+dirty"},
            {"iteration": 9000, "commit": "b" * 40},
        ],
    }
    assert run_commits(record) == {"a" * 12, "b" * 12}
    assert run_commits({"commit": "c" * 40}) == {"c" * 12}
    # A tree sent without .git (a GPU machine) names its commit through $STN_COMMIT, with a note.
    assert run_commits({"commit": "f7d00ea (given by STN_COMMIT; no git checkout)"}) == {"f7d00ea"}
