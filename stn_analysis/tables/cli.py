"""Write an experiment's tables (CSV + Markdown) against the paper from run records.

stn-table                                        # Table 1 of every profile under runs/mnist -> runs/tables/
stn-table --profile quick --wandb                # ... and log it to W&B (offline unless WANDB_MODE says)
stn-table --experiment svhn --profile quick      # Table 2 (and its synthetic twin)
stn-table --experiment addition --profile quick  # Table 4 (MNIST addition)
stn-table --experiment coloc --profile quick     # Table 5 (co-localisation)
stn-table --committed                            # every committed table, from results/records into results/
stn-table --committed --check                    # ... rebuilt elsewhere and compared with the committed files

Tables of one's own runs go to runs/tables/ ($STN_RUNS/tables); only --committed writes into results/. No
table replaces one that has more cells filled (--force does).
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import sys
import tempfile
from pathlib import Path

from stn_analysis.bookkeeping.recipes import profile_optims
from stn_analysis.paths import PROJECT_ROOT, RESULTS, check_checkout, runs_dir
from stn_analysis.records import (
    STORED_TEST_SET_EXPERIMENTS,
    collect_records,
    mark_stand_in_changes,
    mark_test_set_changes,
)
from stn_analysis.tables.aggregate import CSV_COLUMNS, EXPERIMENTS, aggregate
from stn_analysis.tables.coloc import COLOC_CSV_COLUMNS, coloc_rows, write_coloc_tables
from stn_analysis.tables.committed import COMMITTED_TABLES
from stn_analysis.tables.glance import STATUS_BEGIN, STATUS_END, status_markdown, write_table_figure
from stn_analysis.tables.write import TableWouldLoseCells, write_tables
from stn_repro.data.sets import stored_set_checksum
from stn_repro.io import atomic_write_text

# Co-localisation (Table 5) has a layout of its own (stn_repro.coloc_table), not stn_repro.tables' rows.
ALL_EXPERIMENTS = (*EXPERIMENTS, *(() if "coloc" in EXPERIMENTS else ("coloc",)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment",
        choices=ALL_EXPERIMENTS,
        default="mnist",
        help="whose table (" + ", ".join(ALL_EXPERIMENTS) + ")",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="folder searched for record.json (default $STN_RUNS/<experiment>, else runs/<experiment>)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the tables go (default $STN_RUNS/tables; --committed: results/)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where today's stored MNIST and addition sets are, to flag records scored on other ones "
        "(default $STN_DATA or data/)",
    )
    parser.add_argument("--profile", help="only this profile (paper, fast, quick, smoke: configs/profile/)")
    parser.add_argument("--wandb", action="store_true", help="also log each table as a wandb.Table")
    parser.add_argument(
        "--wandb-mode", default=None, help="W&B mode for --wandb (default $WANDB_MODE, else offline)"
    )
    parser.add_argument(
        "--committed", action="store_true", help="rebuild every committed table from results/records"
    )
    parser.add_argument(
        "--check", action="store_true", help="with --committed: compare with the committed files, write none"
    )
    parser.add_argument("--force", action="store_true", help="replace a table even where it would lose cells")
    parser.add_argument(
        "--quiet", action="store_true", help="name the files written, do not print the tables"
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="write the README's status block from the committed tables' CSVs",
    )
    args = parser.parse_args(argv)
    if args.status:
        return readme_status()
    if args.committed:
        return committed_tables(args)
    if args.check:
        parser.error("--check goes with --committed")
    args.out = args.out or runs_dir() / "tables"
    try:
        return experiment_tables(args)
    except TableWouldLoseCells as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def experiment_tables(args) -> int:
    """The tables of ``args.experiment`` from ``args.runs`` (default: the runs folder) into ``args.out``."""
    # The runs folder the runners write to: $STN_RUNS (configs/paths), else runs/.
    runs = args.runs or runs_dir() / args.experiment
    made_from = str(args.runs) if args.runs else None  # named in the table's "Made by" line
    if args.experiment == "coloc":
        return coloc_tables(runs, args, made_from)

    records = [r for r in collect_records(runs) if r.get("experiment", "mnist") == args.experiment]
    if args.experiment in STORED_TEST_SET_EXPERIMENTS:  # flag records scored on another test set than today's
        names = {r["data"] for r in records}
        mark_test_set_changes(records, {n: stored_set_checksum(n, "test", args.data_dir) for n in names})
    if args.experiment == "svhn":  # flag synthetic records scored on another version of the stand-in
        mark_stand_in_changes(records)
    if not records:
        print(
            f"no finished {args.experiment} runs under {runs}: run `make reproduce-{args.experiment}` "
            f"(or python -m experiments.{args.experiment}) first",
            file=sys.stderr,
        )
        return 1
    rows = aggregate(records, profile_optims(args.experiment, records))
    profiles = [args.profile] if args.profile else sorted({r["profile"] for r in rows})
    for profile in profiles:
        if not any(r["profile"] == profile for r in rows):
            print(f"no finished {args.experiment} runs of profile {profile!r} under {runs}", file=sys.stderr)
            return 1
        written = write_tables(rows, args.out, profile, args.experiment, made_from, args.force)
        for csv_path, md_path in written:
            write_table_figure(args.out, md_path.stem, csv_path.read_text())
            print(f"{profile}: {csv_path} and {md_path}")
            if not args.quiet:
                print(md_path.read_text())
            if args.wandb:
                log_table_to_wandb(rows, profile, args.experiment, md_path.stem, runs, args)
    return 0


def readme_status() -> int:
    """Replace the README's status block (between its markers) with :func:`status_markdown` of results/."""
    check_checkout()
    readme = PROJECT_ROOT / "README.md"
    text, block = readme.read_text(), status_markdown(RESULTS)
    if STATUS_BEGIN not in text or STATUS_END not in text:
        print(f"error: {readme} has no status block ({STATUS_BEGIN} ... {STATUS_END})", file=sys.stderr)
        return 1
    before, rest = text.split(STATUS_BEGIN, 1)
    after = rest.split(STATUS_END, 1)[1].removeprefix("\n")
    atomic_write_text(readme, before + block + after)
    print(block, end="")
    return 0


def committed_tables(args) -> int:
    """Rebuild every committed table (:data:`COMMITTED_TABLES`) from its records: into ``results/`` (or
    ``--out``), or, with ``--check``, into a temporary folder compared byte for byte with ``results/``."""
    check_checkout()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) if args.check else (args.out or RESULTS)
        for table in COMMITTED_TABLES:
            arguments = [*table.arguments(), "--out", str(out), "--force", "--quiet"]
            if args.data_dir is not None:
                arguments += ["--data-dir", str(args.data_dir)]
            with contextlib.chdir(PROJECT_ROOT):  # the records folders are named from the project root
                if main(arguments) != 0:
                    return 1
        if not args.check:
            print(
                f"rebuilt {len(COMMITTED_TABLES)} committed tables (and their figures) from results/records into {out}"
            )
            return 0
        made = sorted(p for p in Path(scratch).iterdir() if p.suffix in (".md", ".csv"))
        differ = [p.name for p in made if not filecmp.cmp(p, RESULTS / p.name, shallow=False)]
        for name in differ:
            print(f"differs: results/{name} (rebuild it with `make tables`)", file=sys.stderr)
        print(f"{len(made) - len(differ)} of {len(made)} committed table files are what their records make")
        return 1 if differ else 0


def coloc_tables(runs: Path, args, made_from: str | None) -> int:
    """Table 5 (co-localisation): its own layout, one cell per digit class and set (stn_repro.coloc_table)."""
    # The embedding's records come too: the table states what training e() cost.
    records = [r for r in collect_records(runs) if r.get("experiment") in ("coloc", "coloc_embedding")]
    if not any(r["experiment"] == "coloc" for r in records):
        print(
            f"no finished coloc runs under {runs}: run `make reproduce-coloc` (or python -m experiments.coloc) first",
            file=sys.stderr,
        )
        return 1
    profiles = (
        [args.profile]
        if args.profile
        else sorted({r["profile"] for r in records if r["experiment"] == "coloc"})
    )
    for profile in profiles:
        if not any(r["profile"] == profile and r["experiment"] == "coloc" for r in records):
            print(f"no finished coloc runs of profile {profile!r} under {runs}", file=sys.stderr)
            return 1
        for csv_path, md_path in write_coloc_tables(
            records, args.out, profile, coloc_profile_length(profile), made_from, args.force
        ):
            write_table_figure(args.out, md_path.stem, csv_path.read_text())
            print(f"{profile}: {csv_path} and {md_path}")
            if not args.quiet:
                print(md_path.read_text())
            if args.wandb:
                log_coloc_table_to_wandb(records, profile, md_path.stem, runs, args)
    return 0


def coloc_profile_length(profile: str) -> tuple[int, int] | None:
    """(iterations, batch size) of ``profile=<profile>`` for co-localisation: the runs that fill Table 5's cells."""
    settings = profile_optims("coloc", [{"profile": profile, "cell": "coloc"}]).get(
        ("coloc", profile, "coloc")
    )
    return None if settings is None else (settings["trainer.iterations"], settings["trainer.batch_size"])


def log_coloc_table_to_wandb(records, profile: str, stem: str, runs: Path, args) -> None:
    from stn_repro.tracking import WandbTracker

    synthetic = stem.endswith("_synthetic")
    tracker = WandbTracker(
        project="stn-repro",
        name=stem.replace("_", "-"),
        group=f"coloc-{profile}",
        config={"experiment": "coloc", "profile": profile, "runs": str(runs)},
        dir=runs_dir(),  # wandb/ beside the run folders, never in results/ (git ignores runs/)
        mode=args.wandb_mode or os.environ.get("WANDB_MODE", "offline"),
        tags=["table", "coloc", *(["synthetic"] if synthetic else [])],
    )
    rows = [r for r in coloc_rows(records) if r["profile"] == profile and r["synthetic"] == synthetic]
    tracker.log_table(
        stem.removeprefix("coloc_"), COLOC_CSV_COLUMNS, [[r[c] for c in COLOC_CSV_COLUMNS] for r in rows]
    )
    tracker.finish()


def log_table_to_wandb(rows, profile: str, experiment: str, stem: str, runs: Path, args) -> None:
    from stn_repro.tracking import WandbTracker

    tracker = WandbTracker(
        project="stn-repro",
        name=stem.replace("_", "-"),
        group=f"{experiment}-{profile}",
        config={"experiment": experiment, "profile": profile, "runs": str(runs)},
        dir=runs_dir(),  # wandb/ beside the run folders, never in results/ (git ignores runs/)
        mode=args.wandb_mode or os.environ.get("WANDB_MODE", "offline"),
        tags=["table", experiment, *(["synthetic"] if stem.endswith("_synthetic") else [])],
    )
    synthetic = stem.endswith("_synthetic")
    table_rows = [
        [r[c] for c in CSV_COLUMNS]
        for r in rows
        if r["experiment"] == experiment and r["profile"] == profile and r["synthetic"] == synthetic
    ]
    tracker.log_table(stem.removeprefix(f"{experiment}_"), CSV_COLUMNS, table_rows)
    tracker.finish()


if __name__ == "__main__":
    sys.exit(main())
