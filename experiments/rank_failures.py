"""How a data-parallel run (``torchrun``, or several SLURM tasks) ends when one of its processes fails: one
line, from rank 0, naming the rank, its error and the fix.

When one process fails, the others are left in a collective whose peer has gone: gloo raises "Connection
closed by peer" on each of them (and torchrun sends them SIGTERM), so without this every rank printed a
traceback about the connection and nothing about the cause. Now:

- a rank other than 0 that fails writes its message to ``<run dir>/rank<k>-error.txt`` (the one line of a
  user's mistake, or the traceback of a bug) and exits 1 without printing;
- rank 0, whatever ends its job early (its own error, a collective whose peer has gone, torchrun's SIGTERM),
  first looks for such notes: a peer's note is the cause, reported in one line; a note-less peer failure is
  reported as such. Its own error (a data error on rank 0, say) it reports itself, as a single process does.

Every process of the run writes the same run folder, which is how the notes reach rank 0 (on SLURM, across
nodes, through the shared file system the checkpoints are on already).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

NOTE = "rank{rank}-error.txt"
# Notes older than this process (less a margin for processes started a little apart) are a former launch's.
_STARTED = time.time() - 30.0
# How long rank 0 waits for a peer's note to appear after its collective failed (a shared file system may
# show a file written on another node a little late).
NOTE_WAIT_S = 2.0


def world_size() -> int:
    """The number of processes of this data-parallel run (torchrun's ``WORLD_SIZE``, SLURM's ``SLURM_NTASKS``);
    1 for a process on its own."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return int(env["WORLD_SIZE"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_NTASKS"])
    return 1


def process_rank() -> int:
    """This process's rank in a data-parallel run (torchrun's ``RANK``, SLURM's ``SLURM_PROCID`` with
    several tasks); 0 for a process on its own. Only rank 0 writes the run folder's Hydra files and log."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return int(env.get("RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env.get("SLURM_PROCID", "0"))
    return 0


def is_peer(world: int | None = None) -> bool:
    """Whether this process is a rank other than 0 of a data-parallel run: it leaves the speaking to rank 0."""
    return (world_size() if world is None else world) > 1 and process_rank() > 0


def note_failure(run_dir: Path, message: str | None = None) -> None:
    """As a rank other than 0: leave ``message`` (default: the traceback being handled) for rank 0."""
    text = message if message is not None else traceback.format_exc()
    path = Path(run_dir) / NOTE.format(rank=process_rank())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text.rstrip("\n") + "\n")
        temporary.replace(path)  # rank 0 never reads half a note
    except OSError:
        pass  # nowhere to write (a full disk): rank 0 reports a peer that ended without a note


def peer_failure_line(run_dir: Path, error: BaseException | None, wait_s: float = NOTE_WAIT_S) -> str | None:
    """As rank 0, once its job has ended early (``error``, or ``None`` for a signal): the one line that says
    which other rank failed and why, from the notes in ``run_dir``; ``None`` when no peer failed (rank 0's
    own error or stop is then reported as for a single process). A note that holds a traceback (a bug) is
    named, not printed; a note with one line (a user's mistake) is quoted, fix and all."""
    comm_error = error is not None and collective_lost(error)
    deadline = time.monotonic() + (wait_s if comm_error else 0.0)
    while True:
        notes = sorted(
            (n for n in Path(run_dir).glob(NOTE.format(rank="*")) if n.stat().st_mtime >= _STARTED),
            key=_rank_of,
        )
        if notes or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    world = world_size()
    relaunch = "relaunch the same command to resume (from the last checkpoint, if one was saved)"
    if not notes:
        if not comm_error:
            return None
        return (
            f"a process of this {world}-process run ended without a report ({_first_line(error)}); torchrun's "
            f"summary (or the SLURM job's log) names its rank and exit code (e.g. killed for memory); {relaunch}"
        )
    note = notes[0]
    text = note.read_text().strip()
    rank = _rank_of(note)
    if text.startswith("Traceback"):
        cause = text.splitlines()[-1]
        return (
            f"rank {rank} of {world} failed: {cause} (a bug: its traceback is in {note}); every process of the "
            f"run stopped; {relaunch} once it is fixed"
        )
    note.unlink(missing_ok=True)  # a user's mistake: the line says all there is
    for other in notes[1:]:
        other.unlink(missing_ok=True)
    return (
        f"rank {rank} of {world} failed: {text}; every process of the run stopped; after the fix, {relaunch}"
    )


def _rank_of(note: Path) -> int:
    return int(note.name.removeprefix("rank").split("-", 1)[0])


def collective_lost(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another process of the run has gone (gloo's
    "Connection closed by peer", NCCL's errors)."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        hint in text for hint in ("closed by peer", "reset by peer", "NCCL")
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
