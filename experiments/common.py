"""What every Hydra entry point shares: run folders, config -> settings, trackers, and how a job ends.

Each experiment's entry point (``experiments/mnist.py``, ``experiments/svhn.py``) translates its own config
groups into the library's explicit arguments and hands one function to :func:`job`; the rest is here. Its
``if __name__ == "__main__":`` block calls ``run_entry_point(main)``, so that a mistake Hydra meets before the
job starts (an unknown option, a malformed override, a bad seed in the run folder's name, a run folder that
cannot be made) also ends in one ``error:`` line (tests/test_faults.py holds every runner to it).
"""

from __future__ import annotations

import contextlib
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
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stn_repro.data.files import DataError
from stn_repro.tracking import Tracker, WandbTracker
from stn_repro.training.checkpoints import CheckpointError
from stn_repro.training.loop import TrainingDiverged
from stn_repro.training.run_folder import LOCK_NAME, RunLocked
from stn_repro.training.runs import check_seeds, resolve_device
from stn_repro.training.settings import LR_SCHEDULES, SpeedSettings, TrainSettings

SEEDS_FIX = (
    "give a list of distinct positive integers, e.g. seeds=[1,2,3] (stacked in one process), "
    "or seeds=null with seed=<k> for one seed"
)
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


def seeds_from_config(value: Any) -> list[int] | None:
    """The ``seeds`` config value checked: ``None`` (the single run of ``seed``) or the seeds to stack."""
    if value is None:
        return None
    if not (OmegaConf.is_list(value) or isinstance(value, list | tuple)):
        raise ValueError(f"seeds={value!r} is not a list: {SEEDS_FIX}")
    try:
        return check_seeds(list(value))
    except ValueError as error:
        raise ValueError(f"{error}: {SEEDS_FIX}") from None


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise ValueError(f"seed={seed!r} is not a positive integer: give e.g. seed=1")
    return seed


def positive_int(value: Any, key: str) -> int:
    """``value`` if it is a whole number >= 1, else a ``ValueError`` naming ``key=value`` and the fix."""
    return _positive_int(value, key)


def run_folder(seed: Any, seeds: Any) -> str:
    """The run's folder inside its cell's: ``seed<k>`` for one seed, ``seeds<a>-<b>-<c>`` for stacked ones.

    Registered as the ``stn_run_folder`` resolver that configs/hydra/default.yaml names the run dirs with.
    """
    stacked = seeds_from_config(seeds)
    return f"seed{check_seed(seed)}" if stacked is None else "seeds" + "-".join(map(str, stacked))


# At import, before Hydra resolves hydra.run.dir (also in the joblib launcher's workers, which import this).
OmegaConf.register_new_resolver("stn_run_folder", run_folder, replace=True)


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The ``trainer`` and ``optim`` groups as :class:`TrainSettings`, every number checked."""
    iterations = _positive_int(cfg.trainer.iterations, "trainer.iterations")
    for key in ("batch_size", "log_every"):
        _positive_int(cfg.trainer[key], f"trainer.{key}")
    for key in ("eval_every", "checkpoint_every", "picture_every"):
        _non_negative_int(cfg.trainer[key], f"trainer.{key}")
    lr = _positive_number(cfg.optim.lr, "optim.lr")
    for key in ("momentum", "weight_decay", "localisation_lr_multiplier"):
        _non_negative_number(cfg.optim[key], f"optim.{key}")
    if cfg.trainer.stop_after is not None:
        _positive_int(cfg.trainer.stop_after, "trainer.stop_after")
    step_every = cfg.optim.lr_step_every
    if step_every is not None:
        _positive_int(step_every, "optim.lr_step_every")
    warmup = _non_negative_int(cfg.optim.get("warmup_iterations", 0), "optim.warmup_iterations")
    schedule = cfg.optim.get("lr_schedule", "step")
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"optim.lr_schedule={schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    return TrainSettings(
        iterations=iterations,
        lr=lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        lr_step_every=step_every or max(1, iterations // cfg.optim.get("lr_steps", 3)),
        lr_gamma=cfg.optim.lr_gamma,
        localisation_lr_multiplier=cfg.optim.localisation_lr_multiplier,
        log_every=cfg.trainer.log_every,
        eval_every=cfg.trainer.eval_every,
        checkpoint_every=cfg.trainer.checkpoint_every,
        picture_every=cfg.trainer.picture_every,
        max_loss=cfg.trainer.max_loss,
        stop_after=cfg.trainer.stop_after,
        lr_schedule=schedule,
        warmup_iterations=warmup,
        nesterov=bool(cfg.optim.get("nesterov", False)),
        progress_bar=progress_bar(cfg.trainer.get("progress_bar", "auto")),
    )


def progress_bar(value: Any) -> bool:
    """``trainer.progress_bar``: true, false, or ``auto``: a bar when the output goes to a terminal (not into
    a log file or a pipe, where the plain log lines alone are more useful)."""
    if value == "auto":
        return sys.stderr.isatty()
    if not isinstance(value, bool):
        raise ValueError(f"trainer.progress_bar={value!r}: use auto, true or false")
    return value


def speed_settings(cfg: DictConfig) -> SpeedSettings:
    return SpeedSettings(
        channels_last=channels_last(cfg),
        autocast=cfg.trainer.autocast,
        compile=cfg.trainer.compile,
        compile_mode=cfg.trainer.compile_mode,
    )


def channels_last(cfg: DictConfig) -> bool:
    """``trainer.channels_last``: true, false, or ``cpu``: on where training runs on the CPU, one seed per
    process (measured faster there, `benchmarks/bench_peak.py --channels-last --versus row-major`; not
    measured on a GPU, and the stacked-seeds engine does not take it)."""
    value = cfg.trainer.channels_last
    if value == "cpu":
        stacked = seeds_from_config(cfg.get("seeds")) is not None
        return not stacked and resolve_device(cfg.trainer.device).type == "cpu"
    if not isinstance(value, bool):
        raise ValueError(f"trainer.channels_last={value!r}: use true, false or cpu")
    return value


def seed_spec_fields(cfg: DictConfig, *, speed: bool = True) -> dict[str, Any]:
    """The fields every experiment's spec of one seed takes from the same config keys: ``seed``,
    ``batch_size``, ``profile``, ``reduced_budget``, ``device``, ``data_dir`` and (``speed=True``) ``speed``."""
    fields = {
        "seed": check_seed(cfg.seed),
        "batch_size": positive_int(cfg.trainer.batch_size, "trainer.batch_size"),
        "profile": cfg.trainer.profile,
        "reduced_budget": cfg.trainer.reduced_budget,
        "device": cfg.trainer.device,
        "data_dir": data_dir(cfg),
    }
    if speed:
        fields["speed"] = speed_settings(cfg)
    return fields


def data_dir(cfg: DictConfig) -> Path | None:
    """``paths.data_dir`` as a path (``None``: the library's default, ``$STN_DATA`` or ``./data``)."""
    return None if cfg.paths.data_dir is None else Path(cfg.paths.data_dir)


def refuse_stacked_seeds(cfg: DictConfig) -> None:
    """Stacked seeds (``seeds=[...]``) are distorted MNIST's alone; every other runner trains one seed."""
    if cfg.seeds is not None:
        raise ValueError("seeds=[...] (stacked seeds) is for distorted MNIST only: give seed=<k>")


def seed_tracker(
    cfg: DictConfig,
    spec: Any,
    tags: list[str],
    config: dict[str, Any],
    run_dir: Path,
    reinit: str = "finish_previous",
) -> Callable[[], Tracker]:
    """The ``make_tracker`` of the run of ``spec`` (its ``cell``, ``seed`` and ``profile`` name the W&B run)."""
    name = f"{spec.cell}-seed{spec.seed}-{spec.profile}"
    return lambda: make_tracker(cfg, name=name, tags=tags, config=config, run_dir=run_dir, reinit=reinit)


def make_tracker(
    cfg: DictConfig,
    *,
    name: str,
    tags: list[str],
    config: dict[str, Any],
    run_dir: Path,
    reinit: str = "finish_previous",
) -> Tracker:
    """The W&B run of one seed (offline unless WANDB_MODE says otherwise), or a do-nothing tracker with
    ``logger=none``."""
    if not cfg.logger.enabled:
        return Tracker()
    return WandbTracker(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=name,
        group=cfg.logger.group,
        config=config,
        dir=run_dir,
        mode=cfg.logger.mode,
        tags=tags,
        reinit=reinit,
    )


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
    Returns the test error (the value a Hydra sweeper would optimise) of a finished run, else ``None``.

    What the terminal shows also goes to the run folder's ``<runner>.log`` (appended at each launch; progress
    bars stay in the terminal). A launch that fails before its run has written anything (no checkpoint,
    record or weights: a missing data file, a bad value) leaves no folder behind.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with _TerminalCopy(run_dir / f"{HydraConfig.get().job.name}.log"):
            return _job(cfg, run, run_dir)
    finally:
        remove_stub_run_folder(run_dir, Path(cfg.paths.runs_dir))


def _job(cfg: DictConfig, run, run_dir: Path) -> Any:

    try:
        with _stop_on_sigterm():
            if cfg.trainer.num_threads:
                torch.set_num_threads(_positive_int(cfg.trainer.num_threads, "trainer.num_threads"))
            outcome = run(cfg, run_dir)
    except RunLocked as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            say(f"skipped: {_one_line(str(error))}")
            return None
        _fail(error)
    except USER_ERRORS as error:
        _fail(error)
    except (KeyboardInterrupt, _Terminated) as stop:
        name = "SIGTERM" if isinstance(stop, _Terminated) else "SIGINT"
        say(f"stopped on {name}; relaunch to resume (from the last checkpoint, if one was saved)")
        sys.exit(128 + signal.Signals[name].value)
    records = outcome if isinstance(outcome, list) else [outcome]
    stopped_by = next((r.get("stopped_by") for r in records if r.get("stopped_by")), None)
    if stopped_by:
        sys.exit(128 + signal.Signals[stopped_by].value)
    errors = [r["test_error"] for r in records if r.get("finished")]
    return sum(errors) / len(errors) if errors else None


class SweepProgress(Callback):
    """In a sweep (``-m``), each job starts with ``[run k of N] <cell> seed <s>`` (configs/hydra/default.yaml
    installs it): N is counted from the sweep's overrides as Hydra's basic sweeper expands them."""

    JOBS_ENV = "STN_SWEEP_JOBS"  # the count, for job processes (a parallel launcher's workers)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        os.environ[self.JOBS_ENV] = str(sum(len(b) for b in BasicSweeper.split_arguments(overrides, None)))

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
    file) each end here with one line that names the value and the fix. Any other exception is a bug and
    keeps its traceback; so does everything with ``STN_TRACEBACK=1`` or ``HYDRA_FULL_ERROR=1``.
    """
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    # Hydra re-raises what it would otherwise print itself (its multi-line report, or a failed attempt at
    # one: "An error occurred during Hydra's exception formatting"), so that it reaches the handler below.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as error:
        message = None if full_error == "1" or os.environ.get("STN_TRACEBACK") else _config_error(error)
        if message is None:
            raise
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
    say(f"error: {_one_line(message)}")
    sys.exit(1)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} must be a positive whole number")
    return value


def _non_negative_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}={value!r} must be a whole number >= 0 (0 turns it off)")
    return value


def _positive_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key}={value!r} must be a number > 0")
    return float(value)


def _non_negative_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{key}={value!r} must be a number >= 0")
    return float(value)
