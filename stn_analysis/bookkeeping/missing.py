"""The runs a table still lacks: every (cell, seed) of Table 1 (with TC), Table 4 or Table 5 that has no
finished run record, as the runner overrides that train it.

A run counts as done when ``<cell>/seed<k>/record.json`` says ``finished`` in any of the folders searched
(live run folders, ``runs/<experiment>/<profile>/``, and committed records,
``results/records/<experiment>_<profile>/``, share that layout). A run with a checkpoint but no finished
record is listed with the iteration it resumes from: the same overrides resume it.

From the command line: the runs a table still lacks: every (cell, seed) without a finished record, as commands or queue lines.

stn-missing --profile fast                        # Table 1 + TC, seeds 1-3, in runs/mnist/fast: commands
stn-missing --experiment addition --profile paper --seeds 1
stn-missing --experiment coloc --profile paper --seeds 1   # Table 5
stn-missing --profile fast --records results/records/mnist_fast   # what the committed table lacks
stn-missing --profile fast --queue > queue.txt    # lines for benchmarks/gpu_queue.sh

`make missing` runs the first (`RUNS=results/records/mnist_fast` the fourth). By default it looks where the
runners write and `stn-table` reads, the runs folder ($STN_RUNS, else runs/, <experiment>/<profile>/), and
says how many of the runs it lists the committed records already hold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stn_analysis.bookkeeping.park import checkpoint_progress, progress_text
from stn_analysis.bookkeeping.recipes import check_profile, coloc_embedding_dir, other_settings
from stn_analysis.paths import PROJECT_ROOT, RECORDS, runs_dir
from stn_repro.paper import CLUTTERED_ERROR, TABLE1_ERROR, TABLE1_SETS, TABLE4_ROWS, TABLE5_LOCALISED
from stn_repro.training.checkpoints import CHECKPOINT_NAME
from stn_repro.training.run_folder import read_finished_record

EXPERIMENTS = ("mnist", "addition", "coloc")


@dataclass(frozen=True)
class MissingRun:
    """One (cell, seed) without a finished record. ``overrides`` name the cell for the experiment's runner;
    ``resumes_at`` is the iteration of a checkpoint found for it (``None``: starts from scratch);
    ``other_settings`` names how a finished run of it in ``finished_dir`` departs from the profile."""

    experiment: str
    cell: str
    seed: int
    overrides: tuple[str, ...]
    resumes_at: int | None = None
    other_settings: str = ""
    finished_dir: Path | None = None

    def queue_line(self, profile: str) -> str:
        """The line ``benchmarks/gpu_queue.sh`` reads: the runner's name, then its overrides."""
        return " ".join((self.experiment, *self.overrides, f"profile={profile}", f"seed={self.seed}"))

    def command(self, profile: str) -> str:
        """The command that trains (or resumes) this run."""
        return f"python -m experiments.{self.queue_line(profile)}"


def table_cells(experiment: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every cell of the experiment's table in the table's order: ``(cell name, runner overrides)``.

    **Convention**: cell names are the run records' (``<data>-<model>-<transform or none>``, ``addition-...``,
    ``coloc_t-digit<k>``: co-localisation with the default crop negatives).
    """
    if experiment == "mnist":
        cells = [(data, model, transform) for (model, transform) in TABLE1_ERROR for data in TABLE1_SETS] + [
            ("tc", model, transform) for (model, transform) in CLUTTERED_ERROR
        ]
        return [
            (
                f"{data}-{model}-{transform or 'none'}",
                (f"data={data}", f"model={model}", f"transformer={transform or 'none'}"),
            )
            for data, model, transform in cells
        ]
    if experiment == "addition":
        return [
            (
                f"addition-{model}-{transform or 'none'}",
                (f"model=addition_{model}", f"transformer={transform or 'none'}"),
            )
            for model, transform in TABLE4_ROWS
        ]
    if experiment == "coloc":
        return [
            (f"{data}-digit{digit}", (f"data={data}", f"digit={digit}"))
            for data in TABLE5_LOCALISED
            for digit in range(10)
        ]
    raise ValueError(
        f"unknown experiment {experiment!r}: missing runs are listed for {', '.join(EXPERIMENTS)}"
    )


def missing_runs(
    experiment: str,
    seeds: Sequence[int],
    folders: Iterable[Path | str],
    other_settings: Callable[[dict], str] | None = None,
) -> list[MissingRun]:
    """The (cell, seed) pairs of ``experiment``'s table, cell by cell, that no folder holds a finished record
    of. Folders that do not exist are skipped (no runs there yet). ``other_settings(record)`` names how a
    finished record departs from the profile's settings (``""``: it does not); such a run is not the
    profile's and stays listed, with that text and its folder."""
    if not seeds or any(int(s) < 1 for s in seeds):
        raise ValueError(f"seeds must be positive integers, got {list(seeds)!r}")
    folders = [Path(f) for f in folders]
    missing = []
    for cell, overrides in table_cells(experiment):
        for seed in seeds:
            seed_dirs = [folder / cell / f"seed{seed}" for folder in folders]
            finished = [(d, r) for d in seed_dirs if (r := read_finished_record(d)) is not None]
            deviations = [(d, other_settings(r) if other_settings else "") for d, r in finished]
            if any(not text for _, text in deviations):
                continue
            checkpoints = [d / CHECKPOINT_NAME for d in seed_dirs if (d / CHECKPOINT_NAME).is_file()]
            resumes_at = max((checkpoint_progress(c)["iteration"] for c in checkpoints), default=None)
            finished_dir, text = deviations[0] if deviations else (None, "")
            missing.append(MissingRun(experiment, cell, int(seed), overrides, resumes_at, text, finished_dir))
    return missing


def run_state(run_dir: Path | str) -> str:
    """What a run folder holds, in words: ``finished``, ``resumes at iteration N of M`` or ``not started``.

    For the co-localisation embedding e(), which no table cell names: the first job of a profile trains it.
    """
    run_dir = Path(run_dir)
    if read_finished_record(run_dir) is not None:
        return "finished"
    if (run_dir / CHECKPOINT_NAME).is_file():
        return f"resumes at {progress_text(checkpoint_progress(run_dir / CHECKPOINT_NAME))}"
    return "not started"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", choices=EXPERIMENTS, default="mnist")
    parser.add_argument(
        "--profile", default="paper", help="the profile: paper, fast, quick, smoke (configs/profile/)"
    )
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument(
        "--records",
        type=Path,
        action="append",
        help="folders of <cell>/seed<k>/record.json (default: "
        "results/records/<experiment>_<profile> and the runs folder's <experiment>/<profile>)",
    )
    parser.add_argument("--queue", action="store_true", help="print benchmarks/gpu_queue.sh lines only")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"error: --seeds {args.seeds!r} is not a comma-separated list of integers", file=sys.stderr)
        return 1
    runs = runs_dir()
    folders = args.records or [runs / args.experiment / args.profile]
    try:
        check_profile(args.experiment, args.profile)
        missing = missing_runs(args.experiment, seeds, folders, other_settings(args.experiment, args.profile))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.queue:
        print("\n".join(run.queue_line(args.profile) for run in missing))
        return 0
    print(
        f"{args.experiment}, profile {args.profile}, seeds {args.seeds}: {len(missing)} run(s) without a "
        f"finished record in {', '.join(map(str, folders))}"
    )
    committed_records = RECORDS / f"{args.experiment}_{args.profile}"
    if missing and not args.records and committed_records.is_dir():
        held = len(missing) - len(missing_runs(args.experiment, seeds, [committed_records]))
        if held:
            print(
                f"  ({held} of them have a committed record in {committed_records.relative_to(PROJECT_ROOT)}: "
                "its table is rebuilt with `make tables`; the runners train the ones in the runs folder)"
            )
    if args.experiment == "coloc" and missing:  # with nothing to run, e()'s state does not matter
        kind, embedding = coloc_embedding_dir(args.profile)
        if kind == "table1":
            state = (
                "finished"
                if read_finished_record(embedding) is not None
                else "missing: train it or commit it"
            )
            print(f"  embedding e(), the Table 1 CNN run: {embedding} {state}")
        else:
            print(
                f"  embedding e(), trained by the first job that needs it: {embedding} {run_state(embedding)}"
            )
            committed = RECORDS / f"coloc_{args.profile}" / "embedding"
            if read_finished_record(embedding) is None and read_finished_record(committed) is not None:
                print(
                    f"  (or add embedding.run_dir={committed.relative_to(PROJECT_ROOT)} to each: the committed e(), trained once)"
                )
    for run in missing:
        resumes = "" if run.resumes_at is None else f"  # resumes at iteration {run.resumes_at:,}"
        if run.other_settings:
            print(
                f"  {run.command(args.profile)}  # {run.finished_dir} finished with other settings "
                f"({run.other_settings}): move it aside to train the profile's run"
            )
        else:
            print(f"  {run.command(args.profile)}{resumes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
