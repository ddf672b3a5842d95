"""The tables at a glance: a figure of ours against the paper per table, and the README's status block.

Both are made from a table's CSV (which ``stn-table`` makes from the run records, and ``stn-table --committed
--check`` holds to them): a figure per table beside it (``<out>/figures/<stem>.png``), one panel per data set,
our mean with its seed spread and the paper's number; and :func:`status_markdown`, the README's table of where
each paper table stands, which ``tests/test_readme.py`` compares with the committed CSVs.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stn_repro.data.distortions import VARIANT_SETS
from stn_repro.viz import save_figure

PANEL_TITLES = {"r": "R", "rts": "RTS", "p": "P", "e": "E", "tc": "TC 60x60", "addition": "MNIST addition"}
# The status block's rows: (paper table, CSV stem in results/, what the cells are).
STATUS_TABLES = (
    ("Table 1, distorted MNIST", "mnist_table1_paper"),
    ("Table 1, distorted MNIST", "mnist_table1_fast"),
    ("Table 2, SVHN (synthetic stand-in)", "svhn_table2_quick_synthetic"),
    ("Table 3, CUB (synthetic stand-in)", "cub_table3_quick_synthetic"),
    ("Table 4, MNIST addition", "addition_table4_paper"),
    ("Table 4, MNIST addition", "addition_table4_fast"),
    ("Table 5, co-localisation", "coloc_table5_paper"),
    ("Table 5, co-localisation, the suite's first e() (undistorted digits)", "coloc_table5_paper_plain_e"),
)
STATUS_BEGIN = "<!-- status: made by `stn-table --status` from results/*.csv; do not edit by hand -->"
STATUS_END = "<!-- status end -->"


def read_rows(csv_text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(csv_text)))


def own_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The profile's own cells: not a study set (p_4px), not a run of other settings."""
    return [r for r in rows if not r.get("recipe") and r.get("data") not in VARIANT_SETS]


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def table_figure(stem: str, csv_text: str):
    """Ours (mean, and the spread over seeds where there are several) against the paper's number, one panel
    per data set; ``None`` for a table without cells of its own."""
    rows = read_rows(csv_text)
    if stem.startswith("coloc_"):
        return _coloc_figure(stem, rows)
    rows = own_rows(rows)
    if not rows:
        return None
    panels = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 3.4), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels, strict=True):
        mine = [r for r in rows if r["data"] == panel]
        x = range(len(mine))
        means = [float(r["error_mean"]) for r in mine]
        spreads = [_number(r["error_std"]) or 0.0 for r in mine]
        ax.errorbar(x, means, yerr=spreads, fmt="o", color="tab:blue", capsize=3, label="ours (mean ± std)")
        papers = [(i, _number(r["paper_error"])) for i, r in enumerate(mine)]
        papers = [(i, p) for i, p in papers if p is not None]
        if papers:
            ax.scatter(*zip(*papers, strict=True), marker="_", s=300, color="black", label="paper", zorder=3)
        ax.set_xticks(list(x), [r["label"] for r in mine], rotation=60, ha="right", fontsize=8)
        ax.set_title(PANEL_TITLES.get(panel, panel), fontsize=10)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("% test error")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{stem}: ours against the paper", fontsize=10)
    fig.tight_layout()
    return fig


def _coloc_figure(stem: str, rows: list[dict[str, str]]):
    rows = [r for r in rows if r["negatives"] == "crop"]  # the table's cells: the default negatives
    if not rows:
        return None
    sets = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.2), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], sets, strict=True):
        mine = sorted((r for r in rows if r["data"] == name), key=lambda r: int(r["digit"]))
        digits = [int(r["digit"]) for r in mine]
        ax.bar(digits, [float(r["localised_mean"]) for r in mine], color="tab:blue", label="ours")
        ax.errorbar(
            digits,
            [float(r["localised_mean"]) for r in mine],
            yerr=[_number(r["localised_std"]) or 0.0 for r in mine],
            fmt="none",
            color="black",
            capsize=2,
        )
        low, high = float(mine[0]["paper_low"]), float(mine[0]["paper_high"])
        ax.axhspan(low - 0.5, high + 0.5, color="tab:green", alpha=0.25, label="paper")
        ax.set_xticks(digits)
        ax.set_xlabel("digit class")
        ax.set_title({"coloc_t": "T", "coloc_tc": "TC"}.get(name, name), fontsize=10)
        ax.set_ylim(0, 102)
    axes[0][0].set_ylabel("% of images localised")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{stem}: ours against the paper", fontsize=10)
    fig.tight_layout()
    return fig


def write_table_figure(out_dir: Path, stem: str, csv_text: str) -> Path | None:
    """``<out_dir>/figures/<stem>.png`` of :func:`table_figure`, or ``None`` where there is nothing to draw."""
    fig = table_figure(stem, csv_text)
    if fig is None:
        return None
    return save_figure(fig, Path(out_dir) / "figures" / f"{stem}.png")  # closes it


def _data_label(data: str) -> str:
    """A data set's short name in the status row: its size where the name ends in one (``synthetic-svhn128``
    -> ``128 px``), else the name."""
    size = re.search(r"(\d+)$", data)
    return f"{size.group(1)} px" if size else data


def _status_row(table: str, stem: str, csv_text: str) -> str:
    link = f"[{stem}](results/{stem}.md)"
    rows = read_rows(csv_text)
    if stem.startswith("coloc_"):
        cells = [r for r in rows if r["negatives"] == "crop"]
        by_set = {}
        for name in ("coloc_t", "coloc_tc"):
            mine = [float(r["localised_mean"]) for r in cells if r["data"] == name]
            if mine:
                paper = next(r for r in cells if r["data"] == name)
                low, high = paper["paper_low"].removesuffix(".0"), paper["paper_high"].removesuffix(".0")
                by_set[name] = (
                    f"{sum(mine) / len(mine):.1f}% localised (paper {low if low == high else f'{low}-{high}'}%)"
                )
        seeds = sorted({r["n_seeds"] for r in cells})
        what = f"{len(cells)} cells, {'/'.join(seeds)} seed(s)"
        return f"| {table} | paper | {what} | T {by_set.get('coloc_t', '-')}; TC {by_set.get('coloc_tc', '-')} | {link} |"
    cells = own_rows(rows)
    profile = cells[0]["profile"] if cells else "-"
    with_paper = [r for r in cells if r["paper_error"]]
    at_or_below = [r for r in with_paper if float(r["error_mean"]) <= float(r["paper_error"])]
    ratios = sorted(float(r["error_mean"]) / float(r["paper_error"]) for r in with_paper)
    seeds = sorted({r["n_seeds"] for r in cells}, key=int)
    what = f"{len(cells)} cells, {'/'.join(seeds)} seed(s)"
    if stem.endswith("_synthetic"):
        groups: dict[str, list[str]] = {}
        for r in cells:  # one group per data set (SVHN's 64 and 128 px), in the table's order
            groups.setdefault(r["data"], []).append(f"{r['label']} {float(r['error_mean']):.1f}")
        order = "% error: " + (
            "; ".join(f"{_data_label(data)}: {', '.join(labels)}" for data, labels in groups.items())
            if len(groups) > 1
            else ", ".join(next(iter(groups.values()), []))
        )
        return (
            f"| {table} | {profile} | {what} | {order} (a stand-in: not comparable with the paper) | {link} |"
        )
    spread = f"ours / paper {ratios[0]:.2f}-{ratios[-1]:.2f}x" if ratios else ""
    return f"| {table} | {profile} | {what} | {len(at_or_below)} of {len(with_paper)} at or below the paper's error; {spread} | {link} |"


def status_markdown(results: Path) -> str:
    """The README's status block: one row per committed table of :data:`STATUS_TABLES`."""
    lines = [
        STATUS_BEGIN,
        "| paper | profile | what ran | against the paper (means over seeds) | table |",
        "|---|---|---|---|---|",
    ]
    for table, stem in STATUS_TABLES:
        path = Path(results) / f"{stem}.csv"
        if path.is_file():
            lines.append(_status_row(table, stem, path.read_text()))
    return "\n".join([*lines, STATUS_END]) + "\n"
