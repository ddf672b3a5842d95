"""Run folders: one owner at a time, and a finished run recognised by its record.

A run folder holds ``checkpoint.pt`` (resume), ``record.json`` (once finished; every number in ``results/``
comes from one), ``model.pt`` (the trained weights with what rebuilds the model), ``pictures/`` and a
``.lock`` while a process owns it. Every file is written to a hidden temporary name beside it and renamed into
place, so a killed process leaves at most such a temporary, never half a file under a real name; the next
owner of the folder removes those (:func:`remove_unfinished_writes`).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stn_repro.training.records import (
    RECORD_NAME,
    read_record,
)

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another live process owns the run folder."""


class RunLock:
    """Exclusive ownership of a run folder while a process trains in it (``with RunLock(run_dir): ...``).

    An advisory ``flock`` on ``<run_dir>/.lock``, which holds the owner's pid, host and start time. The
    kernel drops the lock when its owner dies however it dies (``kill -9`` included), so a lock file left
    by a dead process is stale by construction: the next launch takes it over and says whose it was.
    A second launch while the owner lives raises :class:`RunLocked` naming the owner. (``flock`` is per
    host: on a network file system shared by several hosts, do not launch the same run on two of them.)
    """

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print):
        self.path = Path(run_dir) / LOCK_NAME
        self.log = log
        self._handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(handle)
            handle.close()
            raise RunLocked(
                f"{self.path.parent} is in use by pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
                f"(since {owner.get('started', '?')}): wait for that run to end, or stop it (it checkpoints "
                "on SIGTERM) and relaunch to resume"
            ) from None
        previous = _read_owner(handle)
        if previous:
            self.log(
                f"{self.path.parent}: taking over from pid {previous.get('pid')} on {previous.get('host')} "
                "(that process is gone; its checkpoint, if any, resumes)"
            )
        handle.seek(0)
        handle.truncate()
        owner = {
            "pid": os.getpid(),
            "host": platform.node(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        handle.write(json.dumps(owner) + "\n")
        handle.flush()
        self._handle = handle
        remove_unfinished_writes(self.path.parent, self.log)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            # Empty the file before letting go: a lock file with an owner in it means "that owner died".
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.flush()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# What the atomic writers (save_checkpoint, atomic_write_text, save_figure) name their temporary files:
# hidden, beside the file they become. Only a killed writer leaves one behind.
UNFINISHED_WRITES = (".*.tmp", "pictures/.*.png")


def remove_unfinished_writes(run_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Delete the temporary files a killed process left in ``run_dir`` mid-write; return them.

    Call it only while owning the folder (:class:`RunLock` does): a live owner's temporaries are in use.
    """
    found = sorted(
        path for pattern in UNFINISHED_WRITES for path in Path(run_dir).glob(pattern) if path.is_file()
    )
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        log(
            f"{run_dir}: removed {len(found)} unfinished write(s) a stopped process left "
            f"({', '.join(p.name for p in found)}); the files they were to replace are intact"
        )
    return found


def _read_owner(handle) -> dict[str, Any]:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {"pid": "unknown (unreadable lock file)"}


def read_finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The record in ``run_dir`` if it says the run finished, else ``None``."""
    record_path = Path(run_dir) / RECORD_NAME
    if not record_path.exists():
        return None
    record = read_record(record_path)
    return record if record.get("finished") else None


def log_already_finished(record: dict[str, Any], run_dir: Path, log: Callable[[str], None]) -> None:
    log(
        f"{record['cell']} seed {record['seed']}: already finished ({Path(run_dir) / RECORD_NAME}); "
        f"{record.get('metric', '% test error')} {record['test_error']:.2f}%"
    )
