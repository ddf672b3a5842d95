"""Reading run records for analysis: collecting them from folders, and which test set each was scored on.

Every number in ``results/`` comes from a run's ``record.json``; a record names the stored test set it was
scored on by checksum (``test_set.sha256``), and a record rescored later on another build of that set keeps
each further score in its ``rescored`` list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from stn_repro.data.sets import set_checksum
from stn_repro.data.synthetic.svhn import STAND_IN_ATTR, SYNTHETIC_VERSION
from stn_repro.training.records import RECORD_NAME, read_record


def scored_on(record: dict[str, Any], images: Tensor, labels: Tensor) -> bool:
    """Whether ``record`` was scored on exactly these test images and labels (by checksum); a later score
    in its ``rescored`` list does not count (see :func:`error_on_set`)."""
    return (record.get("test_set") or {}).get("sha256") == set_checksum(images, labels)


def error_on_set(record: dict[str, Any], sha256: str) -> tuple[float, str] | None:
    """The test error ``record`` has on the set with checksum ``sha256``, and where it comes from: its own
    score (``"recorded"``) when the run was scored on that set, else the entry of its ``rescored`` list
    (written by ``stn-rescore --write`` from the run's weights) for that set
    (``"rescored"``); ``None`` when neither was scored on it."""
    if (record.get("test_set") or {}).get("sha256") == sha256:
        return float(record["test_error"]), "recorded"
    for entry in record.get("rescored") or []:
        if entry["test_set"]["sha256"] == sha256:
            return float(entry["test_error"]), "rescored"
    return None


def collect_records(runs_dir: Path) -> list[dict[str, Any]]:
    """Every finished run record under ``runs_dir``, in path order."""
    records = []
    for path in sorted(Path(runs_dir).rglob(RECORD_NAME)):
        record = read_record(path)
        if record.get("finished"):
            records.append(record | {"path": str(path)})
    return records


# Experiments scored on a test set that `make data-mnist` stores (data set name = the record's "data")
STORED_TEST_SET_EXPERIMENTS = ("mnist", "addition")


def mark_test_set_changes(records: list[dict[str, Any]], checksums: dict[str, str | None]) -> None:
    """Set each MNIST or addition record's ``test_set_changed``: whether the test set it was scored on
    differs from the one built here (``checksums``: data set name -> sha256 of today's stored test set,
    ``None`` where it is not built). A new generator version changes a set, and so can another CPU (a few
    pixels one grey level apart: see :data:`stn_repro.data.sets.STORED_SET_DTYPE`); such records are flagged
    in the tables, not mixed in silently. ``None``: not checked (a synthetic set, or no set built here).

    A record that ``stn-rescore --write`` scored again on today's set (an entry of its
    ``rescored`` list with today's checksum) is not flagged: its ``test_error`` becomes that score here (in
    memory; the run's own stays in ``recorded_test_error``) and ``test_set_rescored`` is set."""
    for record in records:
        test_set = record.get("test_set") or {}
        today = checksums.get(record.get("data"))
        experiment = record.get("experiment", "mnist")
        if (
            experiment not in STORED_TEST_SET_EXPERIMENTS
            or test_set.get("source") != "mnist"
            or today is None
        ):
            record["test_set_changed"] = None
            continue
        scored = error_on_set(record, today)
        if scored is not None and scored[1] == "rescored":
            record["recorded_test_error"] = record["test_error"]
            record["test_error"] = scored[0]
            record["test_set_rescored"] = True
        record["test_set_changed"] = scored is None


def stand_in_version(record: dict[str, Any]) -> int | None:
    """The synthetic SVHN stand-in version a record was scored on (its ``test_set.stand_in_version``; a
    synthetic SVHN record without one predates version 2: version 1); ``None`` for any other record."""
    if record.get("experiment") != "svhn" or not record.get("synthetic"):
        return None
    return int((record.get("test_set") or {}).get(STAND_IN_ATTR, 1))


def mark_stand_in_changes(records: list[dict[str, Any]]) -> None:
    """Set each synthetic SVHN record's ``test_set_changed`` to ``True`` where it was scored on another
    version of the stand-in than this code draws (:data:`SYNTHETIC_VERSION`): another task, flagged in the
    table rather than shown as today's. A record of today's version stays ``None`` (not checked: the set
    built here is not read), as does every other record."""
    for record in records:
        version = stand_in_version(record)
        if version is not None and version != SYNTHETIC_VERSION:
            record["test_set_changed"] = True


def record_cell(record: dict[str, Any]) -> str | None:
    """The cell a record was trained as (its config's ``cell``: ``tc-st_cnn-affine``), where it says."""
    return record.get("cell") or (record.get("config") or {}).get("cell")
