"""The SLURM path for real (``hydra/launcher=slurm``, submitit), on a cluster such as the single-node one
``scripts/slurm_cluster.sh up`` brings up (``make test-slurm``; docs/slurm.md): a sweep writes the records
the local launcher writes, a run that hits its time limit is requeued and resumes to the uninterrupted
record, ``scancel`` ends the sweep's driver with one line, and CUB trains data-parallel as two SLURM tasks.

The tests marked ``slurm`` skip, saying why, where no cluster answers (``sinfo`` missing or failing, no node
up). The first one checks, without a cluster, the line a job that ended without its result becomes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from experiments.slurm import uncompleted_job_line

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["profile=smoke", "data.source=synthetic", "logger=none", "trainer.num_threads=1"]
# What says when and how long a run trained, not what it learned: the records may differ there alone.
WHEN = {"finished_at", "wall_time_s", "launches"}
HOW_TO_START = (
    "bring a test cluster up with `sudo bash scripts/slurm_cluster.sh up` and run `make test-slurm` "
    "(docs/slurm.md)"
)
SLURM = pytest.mark.slurm


# --- without a cluster: the line ---------------------------------------------------------------------------


def test_a_job_that_ended_without_its_result_is_one_line_naming_it_its_state_and_the_resume(tmp_path):
    submitit = pytest.importorskip("submitit")

    # The jobs' functions are defined here so that submitit pickles them by value (tests/ is not importable
    # in the job's process).
    def sleep_in_a_sweep_job() -> None:
        sys.stderr.write("[run 2 of 2] r-cnn-none seed 1\n")  # the sweep's first line in a job's log
        sys.stderr.flush()
        time.sleep(120)

    def give_up_requeueing() -> None:
        from submitit.core.utils import UncompletedJobError

        raise UncompletedJobError("Job not requeued because: timed-out too many times.")  # as submitit does

    def fail_in_the_job() -> None:
        raise RuntimeError("a bug in the job")

    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=5)
    cancelled = executor.submit(sleep_in_a_sweep_job)
    deadline = time.time() + 60
    while "[run 2 of 2]" not in (cancelled.stderr() or "") and time.time() < deadline:
        time.sleep(0.2)
    assert "[run 2 of 2]" in (cancelled.stderr() or ""), cancelled.stderr()
    cancelled.cancel()
    cancelled._results_timeout_s = 0  # submitit's grace for a result file that is late: none comes
    with pytest.raises(submitit.core.utils.UncompletedJobError) as raised:
        cancelled.results()
    assert type(raised.value) is submitit.core.utils.UncompletedJobError
    state = str(raised.value).split("(state: ")[1].split(")")[0]  # the local executor's: INTERRUPTED
    line = uncompleted_job_line(raised.value)
    log = tmp_path / "jobs" / f"{cancelled.job_id}_0_log.err"
    assert line == (
        f"SLURM job {cancelled.job_id} (r-cnn-none seed 1) ended {state} before its run finished "
        f"(its log: {log}); relaunch the same command to resume (each unfinished run from its last "
        "checkpoint; finished runs are skipped)"
    )
    assert "\n" not in line

    # Out of requeues (hydra.launcher.max_num_timeout): the fix, then the resume.
    timed_out = executor.submit(give_up_requeueing)
    with pytest.raises(submitit.core.utils.FailedJobError) as raised:
        timed_out.results()
    line = uncompleted_job_line(raised.value)
    assert line.startswith(f"SLURM job {timed_out.job_id} ended TIMEOUT (timed-out too many times)")
    assert "hydra.launcher.timeout_min=" in line and line.endswith("finished runs are skipped)")

    # A job's own error (a bug) keeps submitit's report, with the job's traceback.
    failed = executor.submit(fail_in_the_job)
    with pytest.raises(submitit.core.utils.FailedJobError) as raised:
        failed.results()
    assert uncompleted_job_line(raised.value) is None and "a bug in the job" in str(raised.value)
    assert uncompleted_job_line(RuntimeError("something else")) is None
