"""The SLURM path for real (``hydra/launcher=slurm``, submitit), on a cluster such as the single-node one
``scripts/slurm_cluster.sh up`` brings up (``make test-slurm``; docs/slurm.md): a sweep writes the records
the local launcher writes, a run that hits its time limit is requeued and resumes to the uninterrupted
record, ``scancel`` ends the sweep's driver with one line, and CUB trains data-parallel as two SLURM tasks.

The tests marked ``slurm`` skip, saying why, where no cluster answers (``sinfo`` missing or failing, no node
up). The first one checks, without a cluster, the line a job that ended without its result becomes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.slurm import uncompleted_job_line
from stn_repro.data.synthetic.cub import write_cub_tree

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
    # The local executor cancels with SIGINT. A shell without job control starts its background commands
    # with SIGINT ignored, and the job would inherit that (an ignored signal stays ignored across exec): it
    # gets SIGINT's default action here instead, whoever started the tests.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        cancelled = executor.submit(sleep_in_a_sweep_job)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
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


# --- on a cluster --------------------------------------------------------------------------------------------


def _slurm(*command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def unavailable(reason: str) -> None:
    """Skip, saying why; fail where a cluster must be there (``STN_REQUIRE_SLURM=1``: CI, after bringing
    one up), so that its tests cannot pass by skipping."""
    if os.environ.get("STN_REQUIRE_SLURM") == "1":
        pytest.fail(f"STN_REQUIRE_SLURM=1 and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> dict[str, object]:
    """The default partition (or ``$STN_SLURM_PARTITION``) of a SLURM cluster that answers, with its CPUs
    per node and whether it keeps accounts; else the test skips saying why and how to bring one up."""
    if shutil.which("sinfo") is None:
        unavailable(f"no SLURM here (sinfo not found); {HOW_TO_START}")
    try:
        found = _slurm("sinfo", "-h", "-o", "%P|%a|%c|%t")
    except subprocess.TimeoutExpired:
        unavailable(f"sinfo did not answer in 30 s; {HOW_TO_START}")
    if found.returncode != 0:
        reason = (found.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"sinfo failed ({reason}); {HOW_TO_START}")
    partitions = [line.split("|") for line in found.stdout.split()]
    default = next((p for p in partitions if p[0].endswith("*")), partitions[0] if partitions else None)
    wanted = os.environ.get("STN_SLURM_PARTITION")
    if wanted:
        default = next((p for p in partitions if p[0].rstrip("*") == wanted), None)
    if default is None or default[1] != "up" or default[3] not in ("idle", "mix", "alloc"):
        unavailable(
            f"no SLURM partition up with a node that answers (sinfo: {found.stdout.split()}); {HOW_TO_START}"
        )
    config = _slurm("scontrol", "show", "config").stdout
    return {
        "partition": default[0].rstrip("*"),
        "cpus": int(default[2].rstrip("+")),
        "accounting": "accounting_storage/slurmdbd" in config,
    }


def launcher(cluster, tasks: int = 1, *extra: str) -> list[str]:
    """The README's SLURM sweep options for a CPU cluster: one CPU and 2 GB per task, 10 minutes."""
    return [
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={cluster['partition']}",
        "hydra.launcher.gpus_per_node=0",
        f"hydra.launcher.tasks_per_node={tasks}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=10",
        *extra,
    ]


def environment(runs: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "STN_RUNS": str(runs),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def launch(args: list[str], runs: Path, timeout: float = 480, **env: str) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the checkout (SLURM jobs start in the submitter's folder and import
    ``experiments`` from it)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=environment(runs, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(args: list[str], runs: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=environment(runs, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """The exit status and output of ``process``; killed (with what it said) if it runs past ``timeout``."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"still running after {timeout:.0f} s; it said:\n{err[-3000:]}")
    return process.returncode, out, err


def record(runs: Path, cell: str, task: str = "mnist") -> dict:
    return json.loads((runs / task / "smoke" / cell / "seed1" / "record.json").read_text())


def assert_same_learning(a: dict, b: dict, runs_a: Path, runs_b: Path) -> None:
    """Everything but when and where: errors, histories, counts, the config (its runs folder aside)."""
    assert set(a) == set(b)
    differing = {k for k in a if k not in WHEN | {"config"} and a[k] != b[k]}
    assert not differing, {k: (a[k], b[k]) for k in differing}
    assert a["config"] == {**b["config"], "paths": {**b["config"]["paths"], "runs_dir": str(runs_a)}}
    assert b["config"]["paths"]["runs_dir"] == str(runs_b)


def same_weights(a: Path, b: Path) -> bool:
    first, second = (torch.load(p / "model.pt", weights_only=True)["state_dict"] for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def submitit_jobs(sweep_dir: Path) -> list[str]:
    """The SLURM jobs (``<array id>_<index>``, or ``<id>``) that submitit made for a sweep, in order."""
    folders = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and p.name[0].isdigit()]
    jobs = [f for f in folders if "_" in f or not any(g.startswith(f + "_") for g in folders)]
    return sorted(jobs, key=lambda job: [int(part) for part in job.split("_")])


def job_log(sweep_dir: Path, job: str, task: int = 0) -> str:
    """What task ``task`` of ``job`` wrote, stdout then stderr."""
    folder = sweep_dir / ".submitit" / job
    return "".join((folder / f"{job}_{task}_log.{stream}").read_text() for stream in ("out", "err"))


@SLURM
def test_a_smoke_sweep_through_slurm_writes_the_records_the_local_launcher_writes(cluster, tmp_path):
    cells = ["experiment=r_fcn,r_cnn", *SMOKE]
    on_slurm = launch(["experiments.mnist", "-m", *launcher(cluster), *cells], tmp_path / "slurm")
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    here = launch(["experiments.mnist", "-m", *cells], tmp_path / "local")
    assert here.returncode == 0, here.stderr[-3000:]
    sweep = tmp_path / "slurm" / "mnist" / "smoke"
    jobs = submitit_jobs(sweep)
    assert len(jobs) == 2 and all((sweep / ".submitit" / j / f"{j}_0_result.pkl").is_file() for j in jobs)
    for cell in ("r-fcn-none", "r-cnn-none"):
        a, b = record(tmp_path / "slurm", cell), record(tmp_path / "local", cell)
        assert a["finished"] and a["iterations"] == 6
        assert_same_learning(a, b, tmp_path / "slurm", tmp_path / "local")
        seed = Path("mnist", "smoke", cell, "seed1")
        assert same_weights(tmp_path / "slurm" / seed, tmp_path / "local" / seed)


def iterations_for(seconds: float, overrides: list[str], runs: Path) -> int:
    """How many iterations of the run in ``overrides`` train for about ``seconds`` on this machine (from a
    3,000-iteration probe, a few seconds), in hundreds."""
    probe = launch(
        ["experiments.mnist", *overrides, "trainer.iterations=3000", "trainer.eval_every=3000"], runs
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    wall = record(runs, "r-fcn-none")["wall_time_s"]
    return max(6000, round(seconds * 3000 / max(wall, 0.1) / 100) * 100)


@SLURM
def test_a_run_that_hits_its_time_limit_is_requeued_and_resumes_to_the_uninterrupted_record(
    cluster, tmp_path
):
    # A 1-minute limit with the warning 5 s before it: SLURM signals (USR2) in the check, every 30 s, that
    # first finds at most 35 s left, i.e. 25 to 55 s into each start; submitit requeues the job and exits,
    # and the run resumes from its last checkpoint (every 100 iterations). The run trains about 150 s by the
    # probe, so it hits the limit at least once even where the probe's few seconds overstate a step's time
    # twofold (a run estimated at 60 s once finished in a single start in CI); max_num_timeout leaves room
    # for the requeues a slow machine needs.
    run = ["experiment=r_fcn", *SMOKE, "trainer.checkpoint_every=100", "trainer.log_every=1000"]
    iterations = iterations_for(150, run, tmp_path / "probe")
    run += [f"trainer.iterations={iterations}", f"trainer.eval_every={iterations}"]
    limit = [
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=5",
        "hydra.launcher.max_num_timeout=10",
    ]
    on_slurm = start(["experiments.mnist", "-m", *launcher(cluster, 1, *limit), *run], tmp_path / "slurm")
    here = launch(["experiments.mnist", *run], tmp_path / "local", timeout=600)  # meanwhile, uninterrupted
    assert here.returncode == 0, here.stderr[-3000:]
    status, _, err = finish(on_slurm, timeout=600)
    assert status == 0, err[-3000:]
    a, b = record(tmp_path / "slurm", "r-fcn-none"), record(tmp_path / "local", "r-fcn-none")
    assert a["finished"] and a["iterations"] == iterations
    starts = [launch["iteration"] for launch in a["launches"]]
    assert len(starts) >= 2 and starts[0] == 0 and all(i > 0 for i in starts[1:]), starts
    assert_same_learning(a, b, tmp_path / "slurm", tmp_path / "local")
    seed = Path("mnist", "smoke", "r-fcn-none", "seed1")
    assert same_weights(tmp_path / "slurm" / seed, tmp_path / "local" / seed)
    # SLURM's account of it: each resume followed a requeue after the time-limit warning. (The last start may
    # be warned too, as its run ends: then SLURM counts that start FAILED or requeues it once more, and the
    # run, finished, is skipped; either way the driver has the job's result. So its last state is not checked.)
    [job] = submitit_jobs(tmp_path / "slurm" / "mnist" / "smoke")
    log = job_log(tmp_path / "slurm" / "mnist" / "smoke", job)
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log
    assert f"at iteration {starts[1]:,}" in log
    deadline = time.time() + 60  # the accounts follow the job's end by a few seconds
    while True:
        states = _slurm("sacct", "-n", "-X", "-D", "-j", job.split("_")[0], "-o", "State").stdout.split()
        if (states and states[-1] not in ("PENDING", "RUNNING")) or time.time() > deadline:
            break
        time.sleep(1)
    assert states.count("REQUEUED") >= len(starts) - 1, states


@SLURM
def test_scancel_ends_the_sweep_driver_with_one_line_and_a_relaunch_resumes(cluster, tmp_path):
    if not cluster["accounting"]:
        unavailable(
            "the cluster keeps no accounts (AccountingStorageType is not slurmdbd): submitit cannot learn a "
            f"cancelled job's state and the driver polls forever; {HOW_TO_START}"
        )
    runs = tmp_path / "runs"
    sweep = runs / "mnist" / "smoke"
    command = ["experiments.mnist", "-m", *launcher(cluster), "experiment=r_fcn,r_cnn", *SMOKE]
    long = ["trainer.iterations=1000000", "trainer.eval_every=1000000", "trainer.checkpoint_every=20"]
    driver = start([*command, *long], runs)
    checkpoints = [sweep / cell / "seed1" / "checkpoint.pt" for cell in ("r-fcn-none", "r-cnn-none")]
    deadline = time.time() + 240
    while not all(c.is_file() for c in checkpoints) and driver.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert driver.poll() is None and all(c.is_file() for c in checkpoints), "the jobs did not start training"
    array = submitit_jobs(sweep)[0].split("_")[0]
    assert _slurm("scancel", array).returncode == 0
    cancelled = time.time()
    status, out, err = finish(driver, timeout=240)  # submitit asks sacct at least once a minute
    ended_in = time.time() - cancelled
    assert status == 1 and "Traceback" not in err + out
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: SLURM job {array}_0 (r-fcn-none seed 1) ended CANCELLED")
    assert "relaunch the same command to resume" in line, line
    assert ended_in < 180
    # Each run checkpointed on SLURM's SIGTERM; the same command resumes them (here for 20 more iterations).
    for cell in ("r-fcn-none", "r-cnn-none"):
        assert "stopped on SIGTERM" in (sweep / cell / "seed1" / "mnist.log").read_text()
    again = launch([*command, *long, "trainer.stop_after=20"], runs)
    assert again.returncode == 0, again.stderr[-3000:]
    relaunched = submitit_jobs(sweep)[2:]
    assert len(relaunched) == 2
    for job in relaunched:
        output = job_log(sweep, job)
        assert "resuming from" in output and "stopped after stop_after=20 iterations" in output, output


@SLURM
def test_cub_trains_data_parallel_as_two_slurm_tasks_and_a_relaunch_resumes(cluster, tmp_path):
    if cluster["cpus"] < 2:
        unavailable(
            f"two SLURM tasks of one CPU each need a node with 2 CPUs; partition has {cluster['cpus']}"
        )
    data = tmp_path / "data"
    write_cub_tree(data / "synthetic-cub", 6, 3, image_size=(40, 56), seed=3)
    cell = ["experiment=cub/2x_st_cnn_224px", "data=synthetic_cub224", "profile=smoke", "logger=none"]
    cell += ["trainer.num_threads=1"]
    command = ["experiments.cub", "-m", *launcher(cluster, 2), *cell]
    runs = tmp_path / "slurm"
    sweep = runs / "cub" / "smoke"
    first = launch([*command, "trainer.stop_after=2"], runs, STN_DATA=str(data))
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = sweep / "synthetic-cub224-st_cnn_2x" / "seed1"
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "record.json").exists()
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["learner"]["world_size"] == 2 and len(checkpoint["learner"]["rng"]) == 2  # both ranks'
    again = launch(command, runs, STN_DATA=str(data))
    assert again.returncode == 0, again.stderr[-3000:]
    [stopped, resumed] = submitit_jobs(sweep)
    assert "2 processes x 2 images" in job_log(sweep, stopped, 0)
    for job in (stopped, resumed):  # two tasks each, both done; rank 0 alone says (and writes) anything
        for task in (0, 1):
            assert "Job completed successfully" in job_log(sweep, job, task)
        assert "processes x" not in job_log(sweep, job, 1) and "->" not in job_log(sweep, job, 1)
    assert "resuming from" in job_log(sweep, resumed, 0) and "at iteration 2" in job_log(sweep, resumed, 0)
    finished = json.loads((run_dir / "record.json").read_text())
    assert finished["finished"] and finished["iterations"] == 4 and finished["world_size"] == 2
    assert finished["batch_per_process"] == 2 and [x["iteration"] for x in finished["launches"]] == [0, 2]
    # The same run as torchrun's two processes on this machine, uninterrupted.
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "experiments.cub", *cell],
        cwd=ROOT, env=environment(tmp_path / "torchrun", STN_DATA=str(data)),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    local = record(tmp_path / "torchrun", "synthetic-cub224-st_cnn_2x", task="cub")
    assert_same_learning(finished, local, runs, tmp_path / "torchrun")
