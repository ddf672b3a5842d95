"""Write an experiment's tables (CSV and Markdown) from its aggregated rows."""

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
) -> list[tuple[Path, Path]]:
    """Write the experiment's table(s) of ``profile`` as CSV and Markdown; return the ``(csv, md)`` pairs.

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
    written = []
    for stem, table_rows, markdown in tables:
        csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
        atomic_write_text(csv_path, to_csv(table_rows))
        atomic_write_text(md_path, markdown)
        written.append((csv_path, md_path))
    return written
