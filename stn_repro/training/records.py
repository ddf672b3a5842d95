"""Run records and provenance: every number in results/ traces back to one of these JSON files."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from stn_repro.io import atomic_write_text
from stn_repro.training.settings import cpu_model
from stn_repro.transformers.module import spread_collapsed

RECORD_NAME = "record.json"


def record_json(record: dict[str, Any]) -> str:
    """``record`` as ``record.json`` holds it: sorted keys; paths and other non-JSON values as strings."""
    return json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"


def as_written(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as reading its ``record.json`` back gives it (tuples as lists, paths as strings), so a
    fresh run returns the same thing as a finished one that is asked again."""
    return json.loads(record_json(record))


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, record_json(record))


def read_record(path: Path) -> dict[str, Any]:
    """A run's record (``<run folder>/record.json``); a missing or corrupt one is an error that says why."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no run record at {path}: give a run's folder (runs/<experiment>/<profile>/<cell>/seed<k>, or "
            "results/records/<table>/<cell>/seed<k>); a run writes its record.json when it finishes"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"run record {path} is not valid JSON ({error}); delete it and rerun the job"
        ) from None


def git_commit(repo: Path | None = None) -> str:
    """The commit of the code that ran, with ``+dirty`` when the work tree had uncommitted changes.

    Without ``repo``: the suite's own checkout, as the first call in this process found it (a run launches
    with this call), so a work tree moved to another commit while a run trains does not rename the code
    the run imported. Where the code runs from a copy without ``.git`` (e.g. a tree sent to a GPU machine),
    ``$STN_COMMIT`` names it instead, marked as given; else ``"unknown"``.
    """
    return _commit_of(repo) if repo is not None else _code_commit()


@functools.cache
def _code_commit() -> str:
    return _commit_of(Path(__file__).resolve().parents[2])


def _commit_of(repo: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        given = os.environ.get("STN_COMMIT")
        return f"{given} (given by STN_COMMIT; no git checkout)" if given else "unknown"
    return commit + ("+dirty" if dirty else "")


def run_commits(record: dict[str, Any]) -> set[str]:
    """The commits (12 characters) of the code that trained a run: the one that finished it and, for a run
    resumed across sessions, those of its earlier launches (``launches`` in the record)."""
    commits = {short_commit(record["commit"])}
    for launch in record.get("launches") or []:
        if launch.get("commit") not in (None, "not recorded"):
            commits.add(short_commit(launch["commit"]))
    return commits


def short_commit(commit: str) -> str:
    """The first 12 characters of a commit's hash, also where the hash came with a note (a commit given by
    ``$STN_COMMIT`` reads ``<hash> (given by STN_COMMIT; no git checkout)``)."""
    return commit.split()[0][:12] if commit.strip() else commit


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        "commit": git_commit(),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # The vector instructions PyTorch's CPU kernels use here: kernels for other instructions round
        # differently, so a CPU run's exact numbers hold on machines like this one.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "host": platform.node(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def collapsed(record: dict[str, Any]) -> bool:
    """Whether a record's ``localisation_spread`` shows a transformer that predicts one transform for every
    image (:func:`~stn_repro.transformers.spread_collapsed`); ``False`` for a record without it."""
    return spread_collapsed(record.get("localisation_spread"))
