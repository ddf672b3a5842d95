"""How a sweep on SLURM (``hydra/launcher=slurm``: Hydra's submitit launcher) ends when one of its jobs ends
without a result: one line naming the job, its run, its state and how to resume, not submitit's traceback.

The sweep's driver waits for each job's result in turn. A job cancelled (``scancel``), killed for memory or
lost with its node leaves none, and submitit raises ``UncompletedJobError`` in the driver; a job timed out
more often than ``hydra.launcher.max_num_timeout`` allows ends with submitit's own "not requeued" error,
which reaches the driver as a ``FailedJobError``. :func:`run_entry_point <experiments.jobs.run_entry_point>`
turns either into the line from :func:`uncompleted_job_line` and exit status 1.
A run stopped by SLURM's SIGTERM has checkpointed (as on Ctrl-C), so relaunching the same command resumes
it; the sweep's other jobs are SLURM's and run on. A job that raised an error of its own (a bug) keeps
submitit's report, which holds the job's traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

# submitit's message for a job without a result (submitit/core/core.py, Job._get_outcome_and_result).
_NO_RESULT = re.compile(
    r"Job (?P<job>\S+) \(task: (?P<task>\d+)\) with path (?P<result>.+?)\n"
    r"has not produced any output \(state: (?P<state>[^)\n]*)\)"
)
# What submitit raises inside a job it does not requeue again: it reaches the driver as the job's error.
_NOT_REQUEUED = re.compile(r"Job not requeued because: (?P<reason>[^\n]+?)\.?\n")
# The line each sweep job starts its log with (experiments.jobs.SweepProgress).
_RUN_LINE = re.compile(r"^\[run \d+ of \d+\] (?P<run>.+)$", re.M)

_FIXES = {
    "TIMEOUT": "give it more time (hydra.launcher.timeout_min=..., or more requeues: hydra.launcher.max_num_timeout=...)",
    "OUT_OF_MEMORY": "give it more memory (hydra.launcher.mem_gb=...)",
}
_RESUME = (
    "relaunch the same command to resume (each unfinished run from its last checkpoint; finished runs are "
    "skipped)"
)


def uncompleted_job_line(error: BaseException) -> str | None:
    """One line for a SLURM job of a sweep that ended without a result, or ``None`` for any other error."""
    try:
        from submitit.core.utils import FailedJobError, UncompletedJobError
    except ImportError:  # no submitit: no SLURM sweep either
        return None
    if not isinstance(error, UncompletedJobError):
        return None
    text = str(error)
    if isinstance(error, FailedJobError):
        not_requeued = _NOT_REQUEUED.search(text)
        logs = re.search(r"paths:\n\s*- (?P<log>\S+)", text)
        if not_requeued is None or logs is None:
            return None  # the job's own error: its traceback is the report
        log = Path(logs["log"])
        state = f"TIMEOUT ({not_requeued['reason']})"
        fix = _FIXES["TIMEOUT"]
        job = log.name.rsplit("_", 2)[0]  # submitit's <job id>_<task>_log.err
    else:
        match = _NO_RESULT.search(text)
        if match is None:
            return None
        result = Path(match["result"].strip())
        log = result.with_name(result.name.replace("_result.pkl", "_log.err"))
        state = match["state"].strip() or "UNKNOWN"
        fix = _FIXES.get(state.split()[0], "")
        job = match["job"]
    run = _run_of(log)
    return (
        f"SLURM job {job}{f' ({run})' if run else ''} ended {state} before its run finished (its log: "
        f"{log}); {f'{fix}, then ' if fix else ''}{_RESUME}"
    )


def _run_of(log: Path) -> str | None:
    """The run a sweep job trained (``r-cnn-none seed 1``), from the first line of its log."""
    try:
        found = _RUN_LINE.search(log.read_text(errors="replace"))
    except OSError:
        return None
    return found["run"].strip() if found else None
