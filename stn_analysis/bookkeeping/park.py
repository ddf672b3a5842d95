"""Parking unfinished runs in the repository, so that a run longer than one working session finishes in
the next one on another machine.

Run folders (``runs/``) are not tracked by git: on a machine that is handed out for a session at a time,
an unfinished run's checkpoint would be lost with the machine. :func:`park` copies the checkpoint of every
unfinished run under ``runs_dir`` to ``parked_dir`` (tracked), with ``parked.json`` saying where it stopped
and the command that launched it; :func:`unpark` puts them back into a fresh ``runs_dir`` and gives each
run's relaunch command, which resumes it exactly (the checkpoint holds the weights, optimiser, data stream
and random state). Each launch is named in the finished run's record (``launches``), so a run trained over
several sessions says so.

A run is unfinished when its folder holds ``checkpoint.pt`` and no finished ``record.json``. A parked copy
whose run has finished is dropped by the next :func:`park`. Nothing here knows Hydra; the launch command is
read from the ``.hydra/overrides.yaml`` Hydra leaves in the run folder, where there is one.

From the command line: park unfinished runs in the repository at the end of a working session; restore them in the next.

stn-park save      # copy every unfinished run's checkpoint from runs/ to parked/
stn-park restore   # put them back into runs/ and print each run's relaunch command
stn-park list      # what is parked, where each run stopped

`make park` and `make unpark` run the first two. Commit `parked/` after `save` (a checkpoint is a few MB);
relaunching a restored run's command resumes it exactly where it stopped, and its record lists every launch
(`launches`). A later `save` drops the parked copies of runs that have finished. The runs folder is
$STN_RUNS, else runs/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from stn_analysis.paths import PROJECT_ROOT, runs_dir
from stn_repro.io import atomic_write_text, publish_atomically
from stn_repro.training.checkpoints import CHECKPOINT_NAME
from stn_repro.training.records import git_commit
from stn_repro.training.run_folder import LOCK_NAME, read_finished_record

PARKED_NAME = "parked.json"


@dataclass
class Parked:
    """One parked run: its folder relative to the runs folder and what ``parked.json`` says of it."""

    relative: Path
    info: dict[str, Any]

    @property
    def command(self) -> str:
        return self.info.get("command") or "(unknown: relaunch the command that started it)"


def unfinished_runs(runs_dir: Path) -> list[Path]:
    """Every run folder under ``runs_dir`` with a checkpoint and no finished record, sorted."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(
        path.parent
        for path in runs_dir.rglob(CHECKPOINT_NAME)
        if path.is_file() and read_finished_record(path.parent) is None
    )


def checkpoint_progress(path: Path) -> dict[str, Any]:
    """Iteration, planned iterations and training time of a checkpoint (loaded on the CPU)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "iteration" not in state:
        raise ValueError(f"{path} is not a training checkpoint (no iteration in it)")
    settings = state.get("settings") or {}
    return {
        "iteration": state["iteration"],
        "iterations": settings.get("iterations"),
        "wall_time_s": round(float(state.get("wall_time_s", 0.0)), 1),
    }


def progress_text(progress: dict[str, Any]) -> str:
    """``iteration N of M`` (``iteration N`` where the plan is unknown) for :func:`checkpoint_progress`'s dict."""
    planned = f" of {progress['iterations']:,}" if progress.get("iterations") else ""
    return f"iteration {progress['iteration']:,}{planned}"


def _hydra_job_name(run_dir: Path) -> str | None:
    """``hydra.job.name`` from the run folder's ``.hydra/hydra.yaml`` (the entry point's module name)."""
    hydra_yaml = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    from omegaconf import OmegaConf  # only to read the file Hydra wrote; this module takes no config

    try:
        return OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.name")
    except Exception:  # an unreadable hydra.yaml falls back to the folder name
        return None


def launch_command(run_dir: Path, runs_dir: Path) -> str | None:
    """``python -m experiments.<task> <overrides>`` from the run folder's Hydra overrides, if it has them.

    The task is Hydra's job name (``.hydra/hydra.yaml``), else the first folder under ``runs_dir``
    (``runs/mnist/...`` -> ``experiments.mnist``). A run in a runs folder of its own below ``runs_dir``
    (``runs/study/mnist/...``, launched with ``STN_RUNS=runs/study``) gets that ``STN_RUNS`` in front.
    """
    run_dir, runs_dir = Path(run_dir), Path(runs_dir)
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    lines = [line[2:].strip() for line in overrides.read_text().splitlines() if line.startswith("- ")]
    parts = run_dir.relative_to(runs_dir).parts
    task = _hydra_job_name(run_dir)
    if task is None or task not in parts:
        task = parts[0]
    nested = parts[: parts.index(task)]
    prefix = [f"STN_RUNS={runs_dir.joinpath(*nested)}"] if nested else []
    return " ".join([*prefix, f"python -m experiments.{task}", *lines])


def _copy_atomically(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with open(handle, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        publish_atomically(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_owned(run_dir: Path) -> bool:
    """Whether a live process holds the run folder's lock (see :class:`stn_repro.runs.RunLock`)."""
    import fcntl

    lock = Path(run_dir) / LOCK_NAME
    if not lock.exists():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def parked_runs(parked_dir: Path) -> list[Parked]:
    """Every parked run under ``parked_dir``, sorted by folder."""
    parked_dir = Path(parked_dir)
    if not parked_dir.is_dir():
        return []
    found = []
    for info_path in sorted(parked_dir.rglob(PARKED_NAME)):
        relative = info_path.parent.relative_to(parked_dir)
        if not (info_path.parent / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(
                f"{info_path.parent} has {PARKED_NAME} but no {CHECKPOINT_NAME}: the parked copy is incomplete; "
                "delete that folder (the run starts afresh) or restore its checkpoint from git"
            )
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{info_path} is not valid JSON ({error}); restore it from git") from None
        found.append(Parked(relative, info))
    return found


def park(runs_dir: Path, parked_dir: Path, log: Callable[[str], None] = print) -> list[Parked]:
    """Copy every unfinished run's checkpoint from ``runs_dir`` to ``parked_dir``; drop parked copies whose
    run has finished. Return what is parked now.

    A run still in training is parked at its last checkpoint, with a warning: stop it first (SIGTERM
    checkpoints the step it is at) to park its latest state. A parked copy at a later iteration than the
    run folder's checkpoint (the folder was restarted) is kept, with a warning, not overwritten.
    """
    runs_dir, parked_dir = Path(runs_dir), Path(parked_dir)
    for entry in parked_runs(parked_dir):
        if read_finished_record(runs_dir / entry.relative) is not None:
            shutil.rmtree(parked_dir / entry.relative)
            log(f"{entry.relative}: finished; its parked copy is removed")
    for run_dir in unfinished_runs(runs_dir):
        relative = run_dir.relative_to(runs_dir)
        progress = checkpoint_progress(run_dir / CHECKPOINT_NAME)
        target = parked_dir / relative
        before = {}
        if (target / PARKED_NAME).is_file():
            before = json.loads((target / PARKED_NAME).read_text())
            if before.get("iteration", 0) > progress["iteration"]:
                log(
                    f"{relative}: the parked copy (iteration {before['iteration']:,}) is further on than the "
                    f"run folder's ({progress['iteration']:,}); kept. `unpark` restores it"
                )
                continue
        if _is_owned(run_dir):
            log(
                f"{relative}: still training; parking its last checkpoint (iteration {progress['iteration']:,}). "
                "Stop it first (kill -TERM <pid> checkpoints the current step) to park the latest"
            )
        _copy_atomically(run_dir / CHECKPOINT_NAME, target / CHECKPOINT_NAME)
        info = {
            **progress,
            # A folder restored by `unpark` and not relaunched has no Hydra overrides: keep the known command.
            "command": launch_command(run_dir, runs_dir) or before.get("command"),
            "parked_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parked_by_commit": git_commit(),
        }
        atomic_write_text(target / PARKED_NAME, json.dumps(info, indent=2) + "\n")
        log(f"{relative}: parked at {progress_text(progress)}")
    return parked_runs(parked_dir)


def unpark(runs_dir: Path, parked_dir: Path, log: Callable[[str], None] = print) -> list[Parked]:
    """Put every parked checkpoint back into its run folder under ``runs_dir``; return the runs to relaunch.

    A run folder that has finished, or holds a checkpoint at the same or a later iteration, is left alone.
    """
    runs_dir, parked_dir = Path(runs_dir), Path(parked_dir)
    to_relaunch = []
    for entry in parked_runs(parked_dir):
        run_dir = runs_dir / entry.relative
        if read_finished_record(run_dir) is not None:
            log(f"{entry.relative}: already finished here; `park` removes its parked copy")
            continue
        local = run_dir / CHECKPOINT_NAME
        if local.is_file() and checkpoint_progress(local)["iteration"] >= entry.info["iteration"]:
            log(f"{entry.relative}: the run folder's checkpoint is as far on; kept")
        else:
            _copy_atomically(parked_dir / entry.relative / CHECKPOINT_NAME, local)
            log(f"{entry.relative}: restored at iteration {entry.info['iteration']:,}")
        to_relaunch.append(entry)
    return to_relaunch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["save", "restore", "list"])
    parser.add_argument("--runs", type=Path, default=runs_dir(), help="the runs folder")
    parser.add_argument(
        "--parked", type=Path, default=PROJECT_ROOT / "parked", help="where parked runs are kept"
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "save":
            entries = park(args.runs, args.parked)
        elif args.action == "restore":
            entries = unpark(args.runs, args.parked)
        else:
            entries = parked_runs(args.parked)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not entries:
        print(f"nothing parked in {args.parked}")
        return 0
    heading = {"save": "parked now", "restore": "relaunch to resume", "list": "parked"}[args.action]
    print(f"\n{heading}:")
    for entry in entries:
        print(f"  {entry.relative} ({progress_text(entry.info)}): {entry.command}")
    if args.action == "save":
        print(f"\ncommit {args.parked}/ to keep them: git add {args.parked} && git commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
