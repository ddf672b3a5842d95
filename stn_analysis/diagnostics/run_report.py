"""The command line shared by the studies that describe finished ST-CNN runs one section each
(``stn-cub-parts``, ``stn-svhn-windows``): run folders in, one Markdown report out."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from stn_repro.data.files import DataError
from stn_repro.io import atomic_write_text


def run_report_main(
    argv: list[str] | None,
    doc: str,
    command: str,
    title: str,
    describe: Callable[[Path, Path | None], str],
) -> int:
    """Parse ``runs [--data-dir] [--out]``, append ``describe(run, data_dir)`` for every run under ``title``,
    print the report and, where every run was described, write it to ``--out``; 1 if any run failed (each
    failure one ``error:`` line naming it)."""
    parser = argparse.ArgumentParser(
        prog=command, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="finished ST-CNN run folders (record.json, model.pt)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="data folder (default $STN_DATA or data/)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    sections = [f"# {title}", ""]
    failed = 0
    for run_dir in args.runs:
        try:
            sections.append(describe(run_dir, args.data_dir))
        except (FileNotFoundError, DataError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    sections.append(f"Made by `{command} {' '.join(str(r) for r in args.runs)}`.\n")
    text = "\n".join(sections)
    print(text)
    if args.out is not None and not failed:
        atomic_write_text(args.out, text)
    return 1 if failed else 0
