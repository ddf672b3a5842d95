"""How every runner's job starts and ends, the way a user can act on: one ``error:`` line for a mistake (before
the job, while Hydra composes the config, or during it), the signal's exit status after a checkpoint, the
terminal's lines in the run folder's log, no stub folder from a launch that failed before training, and
``[run k of N]`` in a sweep.

Each runner's ``main`` is ``job(cfg, run)`` and its ``if __name__ == "__main__":`` block calls
``run_entry_point(main)`` (tests/test_faults.py holds every runner to both).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from experiments.common import positive_int
from experiments.config_keys import check_added_keys, unknown_key_line
from experiments.rank_failures import (
    collective_lost,
    is_peer,
    note_failure,
    peer_failure_line,
    process_rank,
    world_size,
)
from experiments.slurm import uncompleted_job_line
from stn_repro.data.files import DataError
from stn_repro.training.checkpoints import CheckpointError
from stn_repro.training.loop import TrainingDiverged
from stn_repro.training.run_folder import LOCK_NAME, RunLocked

# Mistakes a user can make and fix (a value, a missing or unwritable file, a busy folder): one line, no
# traceback. STN_TRACEBACK=1 shows the traceback anyway.
USER_ERRORS = (
    DataError,
    RunLocked,
    CheckpointError,
    TrainingDiverged,
    ValueError,
    FileNotFoundError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)
# A full disk (or quota): every file is written to a temporary name first, so what it was to replace is intact.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def say(line: str) -> None:
    """Write one line to stderr in one call. ``print`` writes the text and its newline apart, so under
    ``PYTHONUNBUFFERED=1`` the lines of data-parallel processes sharing one stderr can run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def job(cfg: DictConfig, run: Callable[[DictConfig, Path], dict[str, Any] | list[dict[str, Any]]]) -> Any:
    """Run one Hydra job, ``run(cfg, run_dir) -> record(s)``, and end it the way a user can act on.

    - A user's mistake (:data:`USER_ERRORS`: a bad value, a missing or corrupt file, a diverged run) ends
      the process with one ``error:`` line and exit status 1.
    - A run folder owned by another live process: the same line, exit 1; inside a sweep (``-m``) the job
      is skipped with that line and the sweep goes on.
    - A run stopped by SIGINT or SIGTERM has checkpointed and said so; the process exits with the
      signal's conventional status (130, 143), without a traceback.
    - A signal before or after the training loop (loading data, writing the record) ends the job the same
      way: one line, the signal's status; a relaunch resumes from the last checkpoint, if any.
    - In a data-parallel run (torchrun, SLURM tasks) rank 0 alone speaks: another rank's failure ends the
      job with one line from rank 0 naming that rank, its error and the fix (:mod:`experiments.rank_failures`).
    Returns the test error (the value a Hydra sweeper would optimise) of a finished run, else ``None``.

    What the terminal shows also goes to the run folder's ``<runner>.log`` (appended at each launch; progress
    bars stay in the terminal). A launch that fails before its run has written anything (no checkpoint,
    record or weights: a missing data file, a bad value) leaves no folder behind.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log = run_dir / f"{HydraConfig.get().job.name}.log"
    try:
        with _TerminalCopy(log) if process_rank() == 0 else contextlib.nullcontext():
            try:
                return _job(cfg, run, run_dir)
            except Exception as error:
                if world_size() > 1:
                    _end_data_parallel(run_dir, error)
                raise
    finally:
        remove_stub_run_folder(run_dir, Path(cfg.paths.runs_dir))


def _end_data_parallel(run_dir: Path, error: Exception) -> None:
    """A data-parallel job ended by an error that is not a user's mistake (those end in :func:`_fail`): a
    rank other than 0 leaves its traceback for rank 0 (or, when its collective failed because another rank
    has gone, nothing) and exits quietly; rank 0 reports a peer's failure in one line. Returns only when rank
    0's own error is the cause: it keeps its traceback."""
    if is_peer():
        if not collective_lost(error):
            note_failure(run_dir)
        sys.exit(1)
    # Rank 0 is about to say what happened: torchrun's SIGTERM, sent as soon as it sees a peer's exit, must not
    # kill it before it does (it exits right after anyway).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    line = peer_failure_line(run_dir, error)
    if line is not None:
        say(f"error: {line}")
        sys.exit(1)


def _job(cfg: DictConfig, run, run_dir: Path) -> Any:
    if in_parallel_sweep() and (stop := ParallelSweepStop.requested()) is not None:
        say(f"not started: the sweep was stopped on {stop}")
        return None
    try:
        with _stop_on_sigterm():
            if cfg.trainer.num_threads:
                torch.set_num_threads(positive_int(cfg.trainer.num_threads, "trainer.num_threads"))
            check_added_keys(cfg, list(HydraConfig.get().overrides.task))  # before any work
            outcome = run(cfg, run_dir)
    except RunLocked as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            say(f"skipped: {_one_line(str(error))}")
            return None
        _fail(error)
    except USER_ERRORS as error:
        _fail(error)
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise  # anything else the file system says is not a user's to fix from here: keep the traceback
        _fail(error)
    except (KeyboardInterrupt, _Terminated) as stop:
        name = "SIGTERM" if isinstance(stop, _Terminated) else "SIGINT"
        if world_size() > 1 and not is_peer() and (line := peer_failure_line(run_dir, None)) is not None:
            say(f"error: {line}")  # torchrun stops rank 0 because another rank failed: that is the news
            sys.exit(1)
        if not is_peer():
            say(f"stopped on {name}; relaunch to resume (from the last checkpoint, if one was saved)")
        return _stopped(name, run_dir)
    records = outcome if isinstance(outcome, list) else [outcome]
    stopped_by = next((r.get("stopped_by") for r in records if r.get("stopped_by")), None)
    if stopped_by:
        return _stopped(stopped_by, run_dir)
    errors = [r["test_error"] for r in records if r.get("finished")]
    return sum(errors) / len(errors) if errors else None


def _stopped(name: str, run_dir: Path) -> None:
    """End a job stopped by a signal: exit with the signal's status; in a parallel sweep's worker, tell the
    sweep (it exits so, once every worker has checkpointed) and return, so the worker is not torn down."""
    if in_parallel_sweep():
        ParallelSweepStop.note_stopped(run_dir)
        return None
    sys.exit(128 + signal.Signals[name].value)


def in_parallel_sweep() -> bool:
    """Whether this job runs in a worker process of the joblib launcher (``hydra/launcher=parallel``)."""
    try:
        hydra_config = HydraConfig.get()
    except ValueError:
        return False
    return hydra_config.mode == RunMode.MULTIRUN and "joblib" in str(
        hydra_config.launcher.get("_target_", "")
    )


class ParallelSweepStop:
    """How a parallel sweep stops on SIGTERM or SIGINT as a single run does.

    The joblib launcher's workers are processes of their own: a signal sent to the sweep (``kill``, a
    cluster's pre-emption) reaches only its driver, and without this the workers trained on after it had
    gone. The driver's handler writes ``<sweep dir>/.stop`` (the signal's name) and passes the signal on
    to every worker; each running job checkpoints and returns, noting its run in ``.stopped``; jobs not yet
    started see ``.stop`` and do not start. When the launcher is done the driver says how many runs stopped
    and exits with the signal's status (143, 130); relaunching the sweep resumes each from its checkpoint.
    """

    STOP, STOPPED = ".stop", ".stopped"

    @staticmethod
    def folder() -> Path:
        return Path(HydraConfig.get().sweep.dir)

    @classmethod
    def requested(cls) -> str | None:
        marker = cls.folder() / cls.STOP
        return marker.read_text().strip() if marker.is_file() else None

    @classmethod
    def note_stopped(cls, run_dir: Path) -> None:
        with open(cls.folder() / cls.STOPPED, "a") as handle:  # one short line per write: no interleaving
            handle.write(f"{run_dir}\n")

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = Path(sweep_dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        for name in (self.STOP, self.STOPPED):
            (self.sweep_dir / name).unlink(missing_ok=True)  # a relaunch starts afresh
        self.received: str | None = None
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the workers
        self.received = name
        (self.sweep_dir / self.STOP).write_text(name + "\n")
        for pid in worker_pids(catching=signum):  # the busy ones: an idle worker would just die of it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def finish(self) -> None:
        """Put the handlers back; after a stop, say how many runs stopped and exit with the signal's status."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.received is None:
            return
        marker = self.sweep_dir / self.STOPPED
        stopped = marker.read_text().splitlines() if marker.is_file() else []
        say(
            f"sweep stopped on {self.received}: {len(stopped)} run(s) checkpointed and stopped, the rest not "
            "started; relaunch the same command to resume them (each from its last checkpoint; finished runs "
            "are skipped)"
        )
        sys.exit(128 + signal.Signals[self.received].value)


def worker_pids(catching: int | None = None) -> list[int]:
    """This process's children that run a parallel launcher's jobs (loky's worker processes); with
    ``catching``, only those that handle that signal now: the ones running a job (whose handlers checkpoint)."""
    pids = []
    for tasks in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in tasks.read_text().split():
            with contextlib.suppress(OSError):
                if b"LokyProcess" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                if catching is not None:
                    status = Path(f"/proc/{pid}/status").read_text()
                    caught = int(
                        next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")),
                        16,
                    )
                    if not caught >> (catching - 1) & 1:
                        continue
                pids.append(int(pid))
    return pids


class SweepProgress(Callback):
    """In a sweep (``-m``), each job starts with ``[run k of N] <cell> seed <s>`` (configs/hydra/default.yaml
    installs it): N is counted from the sweep's overrides as Hydra's basic sweeper expands them. With the
    parallel launcher it also installs :class:`ParallelSweepStop` in the sweep's driver."""

    JOBS_ENV = "STN_SWEEP_JOBS"  # the count, for job processes (a parallel launcher's workers)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        os.environ[self.JOBS_ENV] = str(sum(len(b) for b in BasicSweeper.split_arguments(overrides, None)))
        launcher = str(config.hydra.launcher.get("_target_", ""))
        self.stop = ParallelSweepStop(Path(config.hydra.sweep.dir)) if "joblib" in launcher else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if getattr(self, "stop", None) is not None:
            self.stop.finish()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_config = HydraConfig.get()
        if hydra_config.mode != RunMode.MULTIRUN:
            return
        total = os.environ.get(self.JOBS_ENV, "?")
        seeds = config.get("seeds")
        which = f"seeds {list(seeds)}" if seeds else f"seed {config.get('seed')}"
        say(f"[run {hydra_config.job.num + 1} of {total}] {config.get('cell')} {which}")


# What a run folder holds once its run has done anything: it is kept (and resumes) from then on.
RUN_OUTPUTS = ("checkpoint.pt", "record.json", "model.pt", "pictures", "wandb", "boxes.json")


def remove_stub_run_folder(run_dir: Path, runs_root: Path) -> bool:
    """Remove ``run_dir`` if it holds only what Hydra and the lock made before any training (``.hydra/``, an
    empty ``.lock``, the log), and the folders above it that are left empty, up to ``runs_root``. A folder
    with any run output, or whose lock names a live owner, is left alone. Returns whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in RUN_OUTPUTS):
        return False
    lock = run_dir / LOCK_NAME
    if lock.is_file() and lock.read_text().strip():  # owned (or left by a process that died owning it)
        return False
    stub = {".hydra", LOCK_NAME, *(p.name for p in run_dir.glob("*.log"))}
    if any(p.name not in stub for p in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    root = Path(runs_root).resolve()
    parent = run_dir.resolve().parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()  # only an empty folder
        except OSError:
            break
        parent = parent.parent
    return True


class _TerminalCopy:
    """While active, what is written to stdout and stderr also goes to ``path`` (appended), except progress
    bars (text redrawn with a carriage return), which only a terminal can show."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> _TerminalCopy:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a")
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.file), _Tee(sys.stderr, self.file)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.stdout, sys.stderr = self.saved
        self.file.close()


class _Tee:
    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if "\r" not in text:
            self.file.write(text)
            self.file.flush()
        return written

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self.stream, name)


def run_entry_point(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point (``main``) so that what goes wrong before the job starts also ends in
    one ``error:`` line and exit status 1, not in Hydra's report or a traceback.

    Hydra composes the config and makes the run folder before the job (:func:`job`) runs. An unknown config
    option (``data=foo``), a malformed override or an unknown key, a bad value met while resolving the run
    folder's name (``seed=abc``) and a run folder that cannot be made (``STN_RUNS`` read-only, or under a
    file) each end here with one line that names the value and the fix; so does a SLURM sweep whose job ended
    without its result (``scancel``, a time limit: :mod:`experiments.slurm`). Any other exception is a bug and
    keeps its traceback; so does everything with ``STN_TRACEBACK=1`` or ``HYDRA_FULL_ERROR=1``.
    """
    if process_rank() > 0 and not any(a.startswith("hydra.output_subdir=") for a in sys.argv):
        sys.argv.append("hydra.output_subdir=null")  # the run folder's .hydra/ files: rank 0's alone
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    # Hydra re-raises what it would otherwise print itself (its multi-line report, or a failed attempt at
    # one: "An error occurred during Hydra's exception formatting"), so that it reaches the handler below.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as error:
        quiet = not (full_error == "1" or os.environ.get("STN_TRACEBACK"))
        # A config mistake, or a SLURM sweep's job that ended without its result (scancel, a time limit).
        message = (_config_error(error) or uncompleted_job_line(error)) if quiet else None
        if message is None:
            raise
        if not is_peer():  # every process of a data-parallel run composes the same config: rank 0 says it
            say(f"error: {message}")
        sys.exit(1)
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _config_error(error: Exception) -> str | None:
    """One line for a mistake met while Hydra composes the config or makes the run folder, else ``None``."""
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        options = sorted(error.options)
        return (
            f"{group}={name} is not a config option: use one of {', '.join(options)} "
            f"(e.g. {group}={options[0]}; the files are configs/{group}/<option>.yaml)"
        )
    if isinstance(error, OverrideParseException):
        return f"cannot read the override {error.override!r}: {_one_line(error.message)}"
    if isinstance(error, HydraException) and (line := unknown_key_line(error)) is not None:
        return line  # an unknown key given without +: name the nearest known one, not Hydra's "use +key"
    if isinstance(error, HydraException | OmegaConfBaseException):
        # A bad value (ours, e.g. seed=abc) met while resolving an interpolation: its own message.
        cause = _user_error_behind(error)
        if cause is not None:
            return _one_line(str(cause))
        if isinstance(error, OmegaConfBaseException):
            return _omegaconf_line(error)
        text = _one_line(str(error).split("Config search path:")[0])
        if isinstance(error.__cause__, OmegaConfBaseException):
            text += f"; {_omegaconf_line(error.__cause__)}"
        return text
    if isinstance(error, OSError):  # Hydra could not make the run folder or write its .hydra/ files in it
        return _os_error_line(error)
    return None


def _omegaconf_line(error: OmegaConfBaseException) -> str:
    """An OmegaConf message without the ``full_key:`` and ``object_type=`` lines it appends; the key it
    concerns, where known, in brackets."""
    line = _one_line(str(error).splitlines()[0] if str(error) else type(error).__name__)
    key = getattr(error, "full_key", None)
    return f"{line} (at {key})" if key else line


def _user_error_behind(error: BaseException) -> BaseException | None:
    """The first of :data:`USER_ERRORS` in ``error``'s chain of causes (OmegaConf wraps what resolvers raise)."""
    seen = set()
    cause = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, USER_ERRORS) and not isinstance(cause, HydraException | OmegaConfBaseException):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _os_error_line(error: OSError) -> str:
    """A file system error in one line: what failed on which path, and the fix."""
    if error.errno in DISK_FULL:
        where = f" writing {error.filename}" if error.filename else ""
        return (
            f"{error.strerror or 'No space left on device'}{where}; the file it was to replace is intact. Fix: free "
            "space on that disk (or point STN_RUNS, STN_DATA at another one), then relaunch: the run resumes "
            "from its last checkpoint"
        )
    if error.filename is None or error.strerror is None:
        what = str(error)
    else:
        what = f"{error.strerror}: {error.filename}"
    return (
        f"{what}; fix: make that path a writable folder, or point STN_RUNS (run folders) or STN_DATA (data) "
        "at one"
    )


def _one_line(text: str) -> str:
    """``text`` with its lines joined: every message a user sees is one line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class _Terminated(BaseException):
    """SIGTERM outside the training loop (which stops at a step boundary by itself)."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While the job runs, SIGTERM raises :class:`_Terminated` (as Ctrl-C raises ``KeyboardInterrupt``), so
    :func:`job` can end it with one line; the training loop installs its own handler over this one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(error: BaseException) -> None:
    if os.environ.get("STN_TRACEBACK"):
        raise error
    # Our own FileNotFoundErrors say what to do; the file system's other errors get the fix added.
    system_error = isinstance(error, OSError) and not isinstance(error, FileNotFoundError)
    if system_error:
        message = _os_error_line(error)
    elif isinstance(error, OmegaConfBaseException):  # e.g. an interpolation that does not resolve
        cause = _user_error_behind(error)
        message = str(cause) if cause is not None else _omegaconf_line(error)
    else:
        message = str(error)
    if is_peer():  # rank 0 speaks for the run (experiments.rank_failures)
        note_failure(Path(HydraConfig.get().runtime.output_dir), _one_line(message))
        sys.exit(1)
    say(f"error: {_one_line(message)}")
    sys.exit(1)
