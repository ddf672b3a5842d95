"""Faults and bad input: the guarantee the README states ("Faults and bad input"), held by the real runner.

- A run folder has one owner: a second launch names the owner and exits 1 (a sweep skips it); the lock of a
  killed owner is taken over, with a message.
- ``kill -9`` at any point, a checkpoint write included, loses at most the steps since the last checkpoint:
  relaunched until it finishes, the run ends with the record and weights of an uninterrupted run, bit for
  bit (CPU, same seed).
- SIGTERM and SIGINT checkpoint and exit 143 and 130 with one line and no traceback.
- Every bad value a user can type ends in one ``error:`` line naming the value and the fix, exit 1, and no
  file a later run would trust.
- Every runner (``experiments/*.py`` with a ``@hydra.main``: MNIST, SVHN, and those to come) ends through
  the same code (``run_entry_point`` and ``job``), so the same holds for each; the MNIST runner is the one
  tested in depth, the others on a bad seed and an unknown option.

Speed: each launch is a real process running ``python -m experiments.<runner> <args>`` (``runpy`` runs the
module as ``__main__`` with those arguments), forked from one server process that has imported what the
runner imports: that saves 3 to 5 s of imports per launch, over about 50 launches.
:func:`test_python_dash_m_is_the_entry_point_tested_here` checks the real ``python -m`` path itself. A
launch may ask the server for faults: a SIGKILL after a given step or in the middle of a file's write, or
slow steps that leave time to send a signal. They patch the child only; the library has no test hooks.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CELL = Path("mnist") / "smoke" / "r-st_fcn-affine" / "seed1"  # the run folder of BASE, under STN_RUNS
# A small ST-FCN (pictures, a localisation lr group) for 12 steps, checkpointing every 2, on one thread.
BASE = {
    "experiment": "r_st_fcn_affine",
    "model.param_budget": "50000",
    "profile": "smoke",
    "data.source": "synthetic",
    "logger": "none",
    "trainer.num_threads": "1",
    "trainer.iterations": "12",
    "trainer.checkpoint_every": "2",
}
LAUNCH_TIMEOUT_S = 120

# The server: imports the runner once, then forks one child per launch. Protocol, one JSON line each way:
# {"op": "start", "args", "env", "stdout", "stderr", "faults"} -> {"pid"};
# {"op": "wait", "pid", "timeout"} -> {"rc"} (negative: killed by that signal; null: timed out, killed).
SERVER = r"""
import errno, io, json, os, runpy, signal, sys, time, traceback

import torch

import torch._dynamo  # imported by the first optimiser: 2 s a launch

import experiments.mnist  # the imports every launch would repeat, done once

del sys.modules["experiments.mnist"]  # each launch runs it afresh, as __main__
import stn_repro.tasks.mnist as tasks
from stn_repro.training import learners


def kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)


def install(faults):
    real_step = learners.SingleModel.step
    steps = [0]

    def step(self):
        losses = real_step(self)
        steps[0] += 1
        if steps[0] == faults.get("kill_at_step"):
            kill_myself()
        time.sleep(faults.get("step_sleep", 0))
        return losses

    learners.SingleModel.step = step
    if "kill_in_save" in faults:  # {"name": "checkpoint.pt", "nth": 2, "fraction": 0.4}
        spec, real_save, seen = faults["kill_in_save"], torch.save, [0]

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and os.path.basename(f).startswith(f".{spec['name']}."):
                seen[0] += 1
                if seen[0] == spec["nth"]:  # write part of the file, then die as kill -9 would
                    buffer = io.BytesIO()
                    real_save(obj, buffer, *args, **kwargs)
                    data = buffer.getvalue()
                    with open(f, "wb") as handle:
                        handle.write(data[: int(len(data) * spec["fraction"])])
                    kill_myself()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    if "disk_full" in faults:  # {"name": "checkpoint.pt", "nth": 2}: that write finds the disk full
        spec, real_save, real_fdopen, seen = faults["disk_full"], torch.save, os.fdopen, [0]

        def full(f):
            if os.path.basename(str(f)).startswith(f".{spec['name']}."):
                seen[0] += 1
                return seen[0] == spec["nth"]
            return False

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and full(f):
                with open(f, "wb") as handle:  # part of it written, then no space left
                    handle.write(b"\0" * 1000)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            return real_save(obj, f, *args, **kwargs)

        def fdopen(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            name = os.readlink(f"/proc/self/fd/{fd}")
            if full(name):
                handle.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
            return handle

        torch.save, os.fdopen = save, fdopen
    if "sleep_before_data" in faults:
        real_load = tasks.load_mnist_data

        def load(*args, **kwargs):
            print("loading data", flush=True)
            time.sleep(faults["sleep_before_data"])
            return real_load(*args, **kwargs)

        tasks.load_mnist_data = load


def child(request):
    code = 1
    # As a process started from a terminal: Python's own Ctrl-C handler. (A test run started as a background
    # job of a script inherits SIGINT ignored, and the launches would inherit that from the server.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["-m", *request["args"]]
        install(request["faults"])
        try:  # what `python -m experiments.mnist <args>` runs
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:  # as the interpreter ends on SystemExit
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.02)


for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "start":
        pid = os.fork()
        if pid == 0:
            child(request)
        reply = {"pid": pid}
    elif request["op"] == "poll":
        done, status = os.waitpid(request["pid"], os.WNOHANG)
        reply = {"running": not done}
        if done:
            reply["rc"] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    else:
        reply = {"rc": wait(request["pid"], request["timeout"])}
    print(json.dumps(reply), flush=True)
"""


class Launch:
    """One launch of the runner: its pid, and once done its exit status and output."""

    def __init__(self, server: Server, pid: int, stdout: Path, stderr: Path):
        self.server, self.pid, self.stdout_path, self.stderr_path = server, pid, stdout, stderr
        self.rc: int | None = None

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> Launch:
        self.rc = self.server.ask({"op": "wait", "pid": self.pid, "timeout": timeout})["rc"]
        self.server.running.discard(self.pid)
        assert self.rc is not None, f"the launch did not end in {timeout} s:\n{self.stdout}\n{self.stderr}"
        return self

    def wait_until(self, done, timeout: float = LAUNCH_TIMEOUT_S) -> None:
        """Return once ``done()`` holds; fail if the launch ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not done():
            reply = self.server.ask({"op": "poll", "pid": self.pid})
            if not reply["running"]:
                self.server.running.discard(self.pid)
                self.rc = reply["rc"]
            assert reply["running"], f"it ended ({self.rc}) too soon:\n{self.stdout}\n{self.stderr}"
            assert time.monotonic() < deadline, f"it took too long:\n{self.stdout}\n{self.stderr}"
            time.sleep(0.02)

    def wait_for_output(self, text: str) -> None:
        """Return once ``text`` is in the launch's stdout (written line by line)."""
        self.wait_until(lambda: text in self.stdout)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)


class Server:
    def __init__(self, log: Path):
        self.log = log
        self.log_file = open(log, "w")  # the server's own errors; closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
        )
        self.running: set[int] = set()
        self.count = 0

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        assert reply, f"the launch server died:\n{self.log.read_text()}"
        return json.loads(reply)

    def start(
        self, args: list[str], folder: Path, env=None, faults=None, module: str = "experiments.mnist"
    ) -> Launch:
        """Launch ``python -m <module> <args>`` (its output in ``folder``), run folders under ``folder/runs``."""
        self.count += 1
        out, err = folder / f"launch{self.count}.out", folder / f"launch{self.count}.err"
        out.touch()
        err.touch()
        environment = {**os.environ, "STN_RUNS": str(folder / "runs"), **(env or {})}
        reply = self.ask(
            {
                "op": "start",
                "module": module,
                "args": args,
                "env": environment,
                "stdout": str(out),
                "stderr": str(err),
                "faults": faults or {},
            }
        )
        self.running.add(reply["pid"])
        return Launch(self, reply["pid"], out, err)

    def run(self, args, folder, env=None, faults=None, module="experiments.mnist") -> Launch:
        return self.start(args, folder, env, faults, module).wait()

    def close(self) -> None:
        for pid in list(self.running):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.ask({"op": "wait", "pid": pid, "timeout": 10})
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.log_file.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    launcher = Server(tmp_path_factory.mktemp("server") / "server.log")
    yield launcher
    launcher.close()


def command(overrides: dict[str, str] | None = None) -> list[str]:
    """BASE with ``overrides``, as command-line arguments."""
    return [f"{key}={value}" for key, value in {**BASE, **(overrides or {})}.items()]


def run_outcome(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A finished run's record (without what differs between processes) and its trained weights."""
    record = json.loads((run_dir / "record.json").read_text())
    kept = {
        k: record[k] for k in ("test_error", "history", "iterations", "param_count", "test_set", "finished")
    }
    return kept, torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def assert_same_outcome(run_dir: Path, reference) -> None:
    record, weights = run_outcome(run_dir)
    expected_record, expected_weights = reference
    assert record == expected_record
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights), "weights differ"


def leftovers(folder: Path) -> list[str]:
    """Half-written files: the atomic writers' temporaries (none survive a finished or refused run)."""
    return sorted(
        str(p) for pattern in ("**/.*.tmp", "**/pictures/.*.png") for p in folder.glob(pattern) if p.is_file()
    )


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """The uninterrupted run every interrupted one must end equal to: record, weights, checkpoint bytes."""
    folder = tmp_path_factory.mktemp("reference")
    launch = server.run(command(), folder)
    assert launch.rc == 0, launch.stderr
    run_dir = folder / "runs" / CELL
    return {"outcome": run_outcome(run_dir), "checkpoint": (run_dir / "checkpoint.pt").read_bytes()}


def one_error_line(launch: Launch) -> str:
    """The launch's single stderr line, checked: it starts with ``error:``, nothing else was printed there,
    and no traceback anywhere."""
    assert "Traceback" not in launch.stdout + launch.stderr, launch.stdout + launch.stderr
    lines = [line for line in launch.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), launch.stderr
    return lines[0]


# --- one owner per run folder ----------------------------------------------------------------------------------


def test_a_run_folder_has_one_owner_and_a_dead_owners_lock_is_taken_over(server, tmp_path):
    long_run = command({"trainer.iterations": "100000", "trainer.checkpoint_every": "0"})
    owner = server.start(long_run, tmp_path, faults={"step_sleep": 0.01})
    lock = tmp_path / "runs" / CELL / ".lock"
    owner.wait_until(lambda: lock.exists() and f'"pid": {owner.pid},' in lock.read_text())
    holder = f"pid {owner.pid} on {platform.node()}"

    second = server.run(long_run, tmp_path)  # the same command, while the first trains
    assert second.rc == 1
    line = one_error_line(second)
    assert holder in line and str(tmp_path / "runs" / CELL) in line and "relaunch to resume" in line

    swept = server.run(["-m", *long_run], tmp_path)  # in a sweep: skipped, and the sweep goes on
    assert swept.rc == 0 and "Traceback" not in swept.stderr
    assert [line for line in swept.stderr.splitlines() if line.startswith("skipped: ")] == [
        line.replace("error: ", "skipped: ", 1)
    ]

    owner.signal(signal.SIGKILL)
    assert owner.wait().rc == -signal.SIGKILL
    assert json.loads(lock.read_text())["pid"] == owner.pid  # a dead owner's lock file stays behind
    relaunch = server.run(command({"trainer.iterations": "100000", "trainer.stop_after": "1"}), tmp_path)
    assert relaunch.rc == 0, relaunch.stderr
    assert f"taking over from {holder}" in relaunch.stdout
    assert lock.read_text() == ""  # let go: an empty lock file means nobody owns the folder


# --- kill -9 anywhere ------------------------------------------------------------------------------------------


def test_kill_9_at_random_points_then_relaunching_ends_bit_identical_to_an_uninterrupted_run(
    server, reference, tmp_path
):
    rng = random.Random(16)  # the points are random, and the same in every run of the test
    run_dir = tmp_path / "runs" / CELL

    # 1. Killed right after a step (1 to 5): the steps since the last checkpoint are lost, nothing else.
    killed = server.run(command(), tmp_path, faults={"kill_at_step": rng.randint(1, 5)})
    assert killed.rc == -signal.SIGKILL and not (run_dir / "record.json").exists()

    # 2. Killed inside a checkpoint write, part of the file written: the checkpoint before it is intact.
    checkpoint = run_dir / "checkpoint.pt"
    start = torch.load(checkpoint, weights_only=False)["iteration"] if checkpoint.exists() else 0
    fault = {"name": "checkpoint.pt", "nth": rng.randint(1, 2), "fraction": rng.uniform(0.05, 0.95)}
    killed = server.run(command(), tmp_path, faults={"kill_in_save": fault})
    assert killed.rc == -signal.SIGKILL
    assert len(leftovers(run_dir)) == 1, "the half-written checkpoint is a temporary, beside the real one"
    kept = start + 2 * (fault["nth"] - 1)  # the last checkpoint written whole (checkpoint_every=2)
    assert (
        torch.load(checkpoint, weights_only=False)["iteration"] == kept if kept else not checkpoint.exists()
    )

    # 3. Killed at a random moment while it trains: it resumed at most at iteration 6 and logs every 2, so
    #    after its first log line 4 or more slowed steps (0.6 s) are left. The new owner of the folder has
    #    removed the half-written temporary first.
    running = server.start(command(), tmp_path, faults={"step_sleep": 0.15})
    running.wait_for_output("train iter")
    time.sleep(rng.uniform(0.0, 0.4))
    running.signal(signal.SIGKILL)
    assert running.wait().rc == -signal.SIGKILL
    assert "removed 1 unfinished write(s)" in running.stdout
    assert ("resuming from" in running.stdout) == bool(kept)

    # 4. Killed inside the write of the trained weights, after the final checkpoint: no record, no model.pt.
    fault = {"name": "model.pt", "nth": 1, "fraction": rng.uniform(0.05, 0.95)}
    killed = server.run(command(), tmp_path, faults={"kill_in_save": fault})
    assert killed.rc == -signal.SIGKILL
    assert not (run_dir / "model.pt").exists() and not (run_dir / "record.json").exists()

    # 5. The last relaunch finishes (from the final checkpoint) as if nothing had happened.
    last = server.run(command(), tmp_path)
    assert last.rc == 0, last.stderr
    assert "resuming from" in last.stdout and "at iteration 12" in last.stdout
    assert_same_outcome(run_dir, reference["outcome"])
    assert leftovers(tmp_path / "runs") == [] and not list(run_dir.glob("checkpoint.pt.corrupt-*"))
    outputs = [p.read_text() for p in sorted(tmp_path.glob("launch*.*"))]
    assert len(outputs) == 2 * 5 and not any("Traceback" in text for text in outputs)


# --- SIGTERM, SIGINT --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_and_exits_with_one_line_then_a_relaunch_ends_as_an_uninterrupted_run(
    name, server, reference, tmp_path
):
    signum = signal.Signals[name]
    running = server.start(command(), tmp_path, faults={"step_sleep": 0.1})
    running.wait_for_output("train iter")
    running.signal(signum)
    assert running.wait().rc == 128 + signum
    assert "Traceback" not in running.stdout + running.stderr
    assert running.stderr.strip() == ""
    last = running.stdout.strip().splitlines()[-1]
    assert last.startswith(f"stopped on {name} at iteration ") and last.endswith("relaunch to resume")
    assert (tmp_path / "runs" / CELL / "checkpoint.pt").exists()

    relaunch = server.run(command(), tmp_path)
    assert relaunch.rc == 0, relaunch.stderr
    assert_same_outcome(tmp_path / "runs" / CELL, reference["outcome"])


@pytest.mark.parametrize(
    "name,nth",
    [("checkpoint.pt", 2), ("model.pt", 1), ("record.json", 1)],
    ids=["checkpoint", "weights", "record"],
)
def test_a_full_disk_ends_in_one_line_keeps_what_was_written_and_a_relaunch_resumes(
    name, nth, server, reference, tmp_path
):
    launch = server.run(command(), tmp_path, faults={"disk_full": {"name": name, "nth": nth}})
    assert launch.rc == 1
    line = one_error_line(launch)
    assert "No space left on device" in line and name in line and "relaunch" in line
    run_dir = tmp_path / "runs" / CELL
    assert leftovers(tmp_path) == []  # no temporary left behind
    assert not (run_dir / "record.json").exists()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)  # the previous checkpoint, intact
    assert state["iteration"] == (2 if name == "checkpoint.pt" else 12)
    relaunch = server.run(command(), tmp_path)
    assert relaunch.rc == 0, relaunch.stderr
    record, weights = run_outcome(run_dir)
    expected_record, expected_weights = reference["outcome"]
    assert record == expected_record
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_before_training_starts_exits_with_one_line(name, server, tmp_path):
    signum = signal.Signals[name]
    running = server.start(command(), tmp_path, faults={"sleep_before_data": 30})
    running.wait_for_output("loading data")
    running.signal(signum)
    assert running.wait().rc == 128 + signum
    assert "Traceback" not in running.stdout + running.stderr
    assert running.stderr.strip().splitlines() == [
        f"stopped on {name}; relaunch to resume (from the last checkpoint, if one was saved)"
    ]


# --- every bad value a user can type ---------------------------------------------------------------------------


def _wandb_online_without_login(tmp_path: Path) -> dict[str, str]:
    """W&B asked to log online by a user who never ran `wandb login` (no key anywhere W&B looks)."""
    home = tmp_path / "home"
    home.mkdir()
    return {"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(home), "WANDB_CONFIG_DIR": str(home)}


def _not_a_folder(tmp_path: Path) -> dict[str, str]:
    """STN_RUNS where no run folder can be made: a read-only folder, or (as root, whom permissions do not
    stop) a path under a regular file."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return {"STN_RUNS": str(folder / "runs")}
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    return {"STN_RUNS": str(tmp_path / "file.txt" / "runs")}


def _bad_checkpoint(truncated: bool):
    def setup(tmp_path: Path, reference) -> dict[str, str]:
        checkpoint = tmp_path / "runs" / CELL / "checkpoint.pt"
        checkpoint.parent.mkdir(parents=True)
        good = reference["checkpoint"]
        checkpoint.write_bytes(good[: len(good) // 2] if truncated else b"not a checkpoint\n" * 100)
        return {}

    return setup


MNIST_FILE = "train-images-idx3-ubyte"  # the first file the runner reads


def _bad_mnist_file(truncated: bool):
    def setup(tmp_path: Path, reference) -> dict[str, str]:
        folder = tmp_path / "data" / "mnist"
        folder.mkdir(parents=True)
        header = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (60000, 28, 28))
        # Truncated: a true header, then a small part of the 47 MB it announces. Corrupt: not an idx file.
        (folder / MNIST_FILE).write_bytes(header + bytes(1000) if truncated else b"\x00garbage" * 500)
        return {"STN_DATA": str(tmp_path / "data")}

    return setup


def _real_mnist_folder() -> Path | None:
    """A folder holding the four verified raw MNIST files (``make data-mnist``'s), or ``None``."""
    from stn_repro.data.mnist import MNIST_MD5, _is_verified

    for folder in (ROOT / "data" / "mnist", Path(os.environ.get("STN_DATA", "/nonexistent")) / "mnist"):
        if all(_is_verified(folder / name) for name in MNIST_MD5):
            return folder
    return None


def _bad_stored_set(truncated: bool):
    def setup(tmp_path: Path, reference) -> dict[str, str]:
        from stn_repro.data.sets import write_set

        real = _real_mnist_folder()
        if real is None:
            pytest.skip("needs the real MNIST files (make data-mnist) to get as far as the stored sets")
        (tmp_path / "data" / "mnist").mkdir(parents=True)
        for source in real.iterdir():
            (tmp_path / "data" / "mnist" / source.name).symlink_to(source)
        stored = tmp_path / "data" / "mnist_sets" / "r_test.h5"
        if truncated:  # a well-formed HDF5 set, cut in half
            images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
            write_set(
                stored, {"images": images, "labels": torch.arange(64) % 10}, {"set_name": "r", "seed": 1}
            )
            stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
        else:
            stored.parent.mkdir(parents=True)
            stored.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
        return {"STN_DATA": str(tmp_path / "data")}

    return setup


# (description, command-line overrides, setup(tmp_path, reference) -> environment, words the line must hold)
BAD_INPUT = [
    ("unknown experiment", {"experiment": "r_foo"}, None, ["experiment=r_foo", "r_st_fcn_affine"]),
    ("unknown data set", {"data": "foo"}, None, ["data=foo", "rts"]),
    ("unknown model", {"model": "foo"}, None, ["model=foo", "st_cnn"]),
    ("unknown transformer", {"transformer": "foo"}, None, ["transformer=foo", "affine"]),
    ("unknown profile", {"profile": "foo"}, None, ["profile=foo", "smoke"]),
    ("unknown logger", {"logger": "foo"}, None, ["logger=foo", "none"]),
    ("unknown data source", {"data.source": "foo"}, None, ["'foo'", "mnist, synthetic"]),
    ("seed not a number", {"seed": "abc"}, None, ["seed='abc'", "seed=1"]),
    ("seed negative", {"seed": "-1"}, None, ["seed=-1", "seed=1"]),
    ("seed zero", {"seed": "0"}, None, ["seed=0", "seed=1"]),
    ("batch size zero", {"trainer.batch_size": "0"}, None, ["trainer.batch_size=0", "positive whole"]),
    (
        "batch size not a number",
        {"trainer.batch_size": "abc"},
        None,
        ["trainer.batch_size='abc'", "positive"],
    ),
    ("lr negative", {"optim.lr": "-1"}, None, ["optim.lr=-1", "number > 0"]),
    ("lr not a number", {"optim.lr": "abc"}, None, ["optim.lr='abc'", "number > 0"]),
    ("iterations zero", {"trainer.iterations": "0"}, None, ["trainer.iterations=0", "positive whole"]),
    (
        "iterations not a number",
        {"trainer.iterations": "abc"},
        None,
        ["trainer.iterations='abc'", "positive"],
    ),
    ("budget too small", {"model.param_budget": "10"}, None, ["budget of 10", "raise model.param_budget"]),
    ("budget not a number", {"model.param_budget": "abc"}, None, ["model.param_budget='abc'", "positive"]),
    ("unknown device", {"trainer.device": "tpu"}, None, ["'tpu'", "trainer.device=auto"]),
    (
        "unknown key",
        {"trainer.itrations": "5"},
        None,
        ["trainer.itrations", "did you mean trainer.iterations"],
    ),
    ("unknown key in the wrong group", {"trainer.lr": "-1"}, None, ["trainer.lr", "did you mean optim.lr"]),
    ("unknown key added with +", {"+trainer.lr": "-1"}, None, ["trainer.lr", "did you mean optim.lr"]),
    ("unknown key added with ++", {"++model.widht": "3"}, None, ["model.widht", "not a config key"]),
    ("malformed override", {"seed": "[1,"}, None, ["seed=[1,", "override_grammar"]),
    (
        "runs folder not writable",
        {},
        lambda tmp_path, reference: _not_a_folder(tmp_path),
        ["runs", "STN_RUNS"],
    ),
    (
        "W&B online without a login",
        {"logger": "wandb"},
        lambda tmp_path, reference: _wandb_online_without_login(tmp_path),
        ["W&B", "wandb login", "WANDB_MODE=offline", "logger=none"],
    ),
    ("corrupt checkpoint", {}, _bad_checkpoint(truncated=False), ["checkpoint.pt", "moved to", "Relaunch"]),
    ("truncated checkpoint", {}, _bad_checkpoint(truncated=True), ["checkpoint.pt", "moved to", "Relaunch"]),
    ("corrupt MNIST file", {"data.source": "mnist"}, _bad_mnist_file(False), [MNIST_FILE, "make data-mnist"]),
    (
        "truncated MNIST file",
        {"data.source": "mnist"},
        _bad_mnist_file(True),
        [MNIST_FILE, "make data-mnist"],
    ),
    (
        "corrupt stored set",
        {"data.source": "mnist"},
        _bad_stored_set(False),
        ["r_test.h5", "make data-mnist"],
    ),
    (
        "truncated stored set",
        {"data.source": "mnist"},
        _bad_stored_set(True),
        ["r_test.h5", "make data-mnist"],
    ),
]


@pytest.mark.parametrize(
    "overrides,setup,words",
    [row[1:] for row in BAD_INPUT],
    ids=[row[0].replace(" ", "-") for row in BAD_INPUT],
)
def test_every_bad_value_ends_in_one_line_naming_it_and_the_fix(
    overrides, setup, words, server, reference, tmp_path
):
    env = setup(tmp_path, reference) if setup else {}
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    launch = server.run(command(overrides), tmp_path, env=env)
    assert launch.rc == 1
    line = one_error_line(launch)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    made = {p for p in tmp_path.rglob("*") if p.is_file() and p not in before}
    assert not {p.name for p in made} & {"record.json", "model.pt", "checkpoint.pt"}, made
    assert leftovers(tmp_path) == []

    checkpoint = tmp_path / "runs" / CELL / "checkpoint.pt"
    if checkpoint in before:  # a corrupt checkpoint is kept aside, byte for byte, and the line says where
        (aside,) = checkpoint.parent.glob("checkpoint.pt.corrupt-*")
        assert not checkpoint.exists() and aside.read_bytes() == before[checkpoint] and str(aside) in line


def test_a_second_corrupt_checkpoint_is_set_aside_beside_the_first_not_over_it(tmp_path, monkeypatch):
    from stn_repro.training import checkpoints

    monkeypatch.setattr(
        checkpoints.time, "strftime", lambda fmt: "20260101-000000"
    )  # both in the same second
    checkpoint = tmp_path / "checkpoint.pt"
    for content in (b"first corrupt checkpoint", b"second corrupt checkpoint"):
        checkpoint.write_bytes(content)
        with pytest.raises(checkpoints.CheckpointError, match="it was moved to"):
            checkpoints.read_checkpoint(checkpoint)
    assert not checkpoint.exists()
    kept = {p.name: p.read_bytes() for p in tmp_path.glob("checkpoint.pt.corrupt-*")}
    assert kept == {
        "checkpoint.pt.corrupt-20260101-000000": b"first corrupt checkpoint",
        "checkpoint.pt.corrupt-20260101-000000-2": b"second corrupt checkpoint",
    }


# --- every runner: python -m, and the same rules -----------------------------------------------------------------


def test_python_dash_m_is_the_entry_point_tested_here(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.mnist", *command({"seed": "abc"})],
        cwd=ROOT,
        env={**os.environ, "STN_RUNS": str(tmp_path / "runs")},
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["error: seed='abc' is not a positive integer: give e.g. seed=1"]
    assert not (tmp_path / "runs").exists()


def _is_runner(path: Path) -> bool:
    """Whether ``path`` defines a ``@hydra.main`` entry point."""
    return any(
        isinstance(node, ast.FunctionDef) and any("hydra.main" in ast.unparse(d) for d in node.decorator_list)
        for node in ast.parse(path.read_text()).body
    )


RUNNERS = sorted(p for p in (ROOT / "experiments").glob("*.py") if _is_runner(p))


@pytest.mark.parametrize("runner", RUNNERS, ids=[p.stem for p in RUNNERS])
def test_every_runner_ends_through_run_entry_point_and_job(runner):
    """The rules above hold for every experiment's runner (MNIST, SVHN, ...) because each runs as tested
    here: its ``__main__`` block calls ``run_entry_point(main)`` and its ``main`` returns ``job(cfg, run)``."""
    tree = ast.parse(runner.read_text())
    main_blocks = [
        node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
    ]
    called = ast.unparse(main_blocks[0].body[0]).strip() if main_blocks else None
    assert called == "run_entry_point(main)", (
        f"experiments/{runner.name}: its `if __name__ == '__main__':` block runs {called!r}; make it "
        "`run_entry_point(main)` (from experiments.common), so command-line mistakes end in one error: line"
    )
    (main,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert "job(" in ast.unparse(main), f"experiments/{runner.name}: main() must return job(cfg, run)"


def test_a_status_line_reaches_stderr_in_one_write(monkeypatch):
    """Data-parallel processes share one stderr, and under PYTHONUNBUFFERED=1 each write is its own system
    call: a line written in two calls (text, then newline, as ``print`` does) can run into another
    process's line."""
    from experiments.jobs import say

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    stderr = Recorder()
    monkeypatch.setattr(sys, "stderr", stderr)
    say("skipped: run folder in use by pid 7")
    assert stderr.writes == ["skipped: run folder in use by pid 7\n"]


BAD_COMMAND_LINES = [
    ("seed=abc", ["seed='abc'", "seed=1"]),
    ("data=foo", ["data=foo", "use one of"]),
    # An unknown key, given plainly or added with +: the nearest known key, never a value stored unread.
    ("trainer.lr=-1", ["trainer.lr", "did you mean optim.lr"]),
    ("+trainer.lr=-1", ["trainer.lr", "did you mean optim.lr"]),
]


@pytest.mark.parametrize(
    "runner,override,words",
    [(runner, override, words) for runner in RUNNERS for override, words in BAD_COMMAND_LINES],
    ids=[f"{runner.stem}-{override}" for runner in RUNNERS for override, _ in BAD_COMMAND_LINES],
)
def test_every_runner_ends_a_bad_command_line_in_one_line(runner, override, words, server, tmp_path):
    launch = server.run([override], tmp_path, module=f"experiments.{runner.stem}")
    assert launch.rc == 1
    line = one_error_line(launch)
    assert all(word in line for word in words), line


# --- a parallel sweep ---------------------------------------------------------------------------------------

PARALLEL_SWEEP = [
    "-m",
    "hydra/launcher=parallel",
    "hydra.launcher.n_jobs=2",
    "profile=smoke",
    "data=r",
    "data.source=synthetic",
    "model=fcn",
    "transformer=none",
    "model.param_budget=50000",
    "seed=1,2,3,4",
    "trainer.iterations=5000",
    "trainer.log_every=100",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=100",
    "trainer.num_threads=1",
    "logger=none",
]


def children(pid: int) -> list[int]:
    found = []
    for tasks in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in tasks.read_text().split()]
    return found


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_a_parallel_sweep_reaches_every_worker_and_a_relaunch_resumes(name, tmp_path):
    env = {**os.environ, "STN_RUNS": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "experiments.mnist", *PARALLEL_SWEEP]
    sweep = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    runs = tmp_path / "runs" / "mnist" / "smoke" / "r-fcn-none"
    deadline = time.monotonic() + 240
    while len(list(runs.glob("seed*/checkpoint.pt"))) < 2:  # both workers are training
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.2)
    workers = children(sweep.pid)
    sweep.send_signal(getattr(signal, name))
    out, err = sweep.communicate(timeout=240)
    assert sweep.returncode == 128 + getattr(signal, name).value, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith(f"sweep stopped on {name}: 2 run(s) checkpointed and stopped") and "relaunch" in last
    )
    assert (out + err).count(f"stopped on {name} at iteration") == 2  # each worker checkpointed after a step
    checkpoints = {p: p.stat().st_mtime_ns for p in runs.glob("seed*/checkpoint.pt")}
    deadline = time.monotonic() + 60  # the idle workers notice their driver is gone and leave
    while [pid for pid in workers if Path(f"/proc/{pid}").exists()] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # no worker trained on alone
    started = sorted(p.parent.name for p in runs.glob("seed*/checkpoint.pt"))
    assert len(started) == 2 and not list(runs.glob("seed*/record.json"))
    assert sorted(p.name for p in runs.iterdir()) == started  # the jobs that did not start left no folder
    if name == "SIGINT":
        return
    relaunch = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert relaunch.stdout.count("resuming") == 2 and len(list(runs.glob("seed*/record.json"))) == 4


def test_only_rank_0_of_a_data_parallel_run_writes_hydras_files(monkeypatch):
    from experiments.jobs import run_entry_point

    seen = []
    for rank, expected in (("0", False), ("1", True)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setattr(sys, "argv", ["experiments.cub", "profile=smoke"])
        run_entry_point(lambda: seen.append(list(sys.argv)))
        assert ("hydra.output_subdir=null" in seen[-1]) == expected
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(sys, "argv", ["experiments.cub"])
    run_entry_point(lambda: seen.append(list(sys.argv)))
    assert seen[-1] == ["experiments.cub"]


def test_the_faults_page_and_the_readme_state_the_figures_of_this_test():
    page = (ROOT / "docs" / "faults.md").read_text()
    assert f"| bad input, MNIST runner | {len(BAD_INPUT)} values" in page
    per_runner = f"{len(BAD_COMMAND_LINES)} command lines"
    assert (
        per_runner in page and f"x {len(RUNNERS)} runners = {len(BAD_COMMAND_LINES) * len(RUNNERS)} |" in page
    )
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"{len(BAD_INPUT)} bad inputs to the MNIST runner" in readme
    assert (
        f"{len(BAD_COMMAND_LINES) * len(RUNNERS)} bad command lines across the {len(RUNNERS)} runners"
        in readme
    )
