"""Write an experiment's tables (CSV and Markdown) from its aggregated rows, never losing cells.

A table is written only where it keeps every cell the file it replaces had: a table made from a partial runs
folder (one interrupted quick run) must not replace a complete one (:class:`TableWouldLoseCells`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stn_analysis.tables.addition import addition_markdown
from stn_analysis.tables.aggregate import EXPERIMENTS, to_csv
from stn_analysis.tables.cub import cub_markdown
from stn_analysis.tables.mnist import mnist_table_stem, to_markdown
from stn_analysis.tables.svhn import svhn_markdown
from stn_repro.io import atomic_write_text


def write_tables(
    rows: list[dict[str, Any]],
    out_dir: Path,
    profile: str,
    experiment: str = "mnist",
    runs: str | None = None,
    force: bool = False,
) -> list[tuple[Path, Path]]:
    """Write the experiment's table(s) of ``profile`` as CSV and Markdown; return the ``(csv, md)`` pairs.
    Raises :class:`TableWouldLoseCells` rather than replace a table that has more cells filled (``force``:
    replace it anyway).

    MNIST: ``mnist_table1_<profile>``. MNIST addition: ``addition_table4_<profile>``. SVHN: ``svhn_table2_<profile>``, and ``svhn_table2_<profile>_synthetic``
    for runs on the synthetic stand-in (never mixed with real SVHN runs).
    CUB: ``cub_table3_<profile>`` (and ``cub_table3_<profile>_synthetic``, never mixed with real CUB runs).
    """
    out_dir = Path(out_dir)
    mine = [r for r in rows if r["experiment"] == experiment and r["profile"] == profile]
    if experiment == "mnist":
        tables = [
            (
                mnist_table_stem(profile, reading),
                [r for r in mine if r["budget_reading"] == reading],
                to_markdown(rows, profile, reading, runs),
            )
            for reading in sorted({r["budget_reading"] for r in mine})
        ]
        if not tables:
            raise ValueError(f"no finished MNIST runs of profile {profile!r}")
    elif experiment == "svhn":
        tables = [
            (
                f"svhn_table2_{profile}" + ("_synthetic" if synthetic else ""),
                [r for r in mine if r["synthetic"] == synthetic],
                svhn_markdown(rows, profile, synthetic, runs),
            )
            for synthetic in sorted({r["synthetic"] for r in mine})
        ]
        if not tables:
            raise ValueError(f"no finished SVHN runs of profile {profile!r}")
    elif experiment == "addition":
        tables = [(f"addition_table4_{profile}", mine, addition_markdown(rows, profile, runs))]
    elif experiment == "cub":
        tables = [
            (
                f"cub_table3_{profile}" + ("_synthetic" if synthetic else ""),
                [r for r in mine if r["synthetic"] == synthetic],
                cub_markdown(rows, profile, synthetic, runs),
            )
            for synthetic in sorted({r["synthetic"] for r in mine})
        ]
        if not tables:
            raise ValueError(f"no finished CUB runs of profile {profile!r}")
    else:
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    return [
        publish_table(out_dir, stem, to_csv(table_rows), markdown, force)
        for stem, table_rows, markdown in tables
    ]


# What a table says where a cell has no run: every writer's Markdown uses it.
NOT_RUN = "not run"


class TableWouldLoseCells(ValueError):
    """A table would replace one with more cells filled (made from fewer records)."""


def publish_table(
    out_dir: Path, stem: str, csv_text: str, markdown: str, force: bool = False
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` into ``out_dir``, both or neither: not over a Markdown table with
    fewer "not run" cells than ``markdown`` (unless ``force``)."""
    csv_path, md_path = Path(out_dir) / f"{stem}.csv", Path(out_dir) / f"{stem}.md"
    if md_path.is_file() and not force:
        before, after = md_path.read_text().count(NOT_RUN), markdown.count(NOT_RUN)
        if after > before:
            raise TableWouldLoseCells(
                f"{md_path} has {before} cell(s) not run, the table made now {after}: writing it would lose "
                "cells (was it made from a partial runs folder?). Write it elsewhere (--out), rebuild the "
                "committed tables from their records (`make tables`), or replace it anyway (--force)"
            )
    atomic_write_text(csv_path, csv_text)
    atomic_write_text(md_path, markdown)
    return csv_path, md_path
