"""Tables against the paper, built from run records (``record.json``), as CSV and Markdown."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from stn_repro.paper import TABLE1_ERROR, TABLE1_SETS, model_label, paper_error
from stn_repro.training.records import RECORD_NAME, atomic_write_text, read_record

CSV_COLUMNS = [
    "profile",
    "data",
    "model",
    "transform",
    "label",
    "seeds",
    "n_seeds",
    "error_mean",
    "error_std",
    "paper_error",
    "difference",
    "param_count",
    "iterations",
    "batch_size",
    "images_seen",
    "reduced_budget",
    "wall_time_s",
    "commits",
    "devices",
]
SET_LABELS = {"r": "R", "rts": "RTS", "p": "P", "e": "E", "tc": "TC 60x60"}


def collect_records(runs_dir: Path) -> list[dict[str, Any]]:
    """Every finished run record under ``runs_dir``, in path order."""
    records = []
    for path in sorted(Path(runs_dir).rglob(RECORD_NAME)):
        record = read_record(path)
        if record.get("finished"):
            records.append(record | {"path": str(path)})
    return records


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (profile, data, model, transform): mean and sample std over seeds, and provenance."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["profile"], record["data"], record["model"], record["transform"])].append(record)
    rows = []
    for (profile, data, model, transform), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        errors = [r["test_error"] for r in runs]
        mean = statistics.fmean(errors)
        paper = paper_error(data, model, transform)
        rows.append(
            {
                "profile": profile,
                "data": data,
                "model": model,
                "transform": transform or "",
                "label": model_label(model, transform),
                "seeds": " ".join(str(r["seed"]) for r in runs),
                "n_seeds": len(runs),
                "error_mean": round(mean, 3),
                "error_std": round(statistics.stdev(errors), 3) if len(errors) > 1 else None,
                "paper_error": paper,
                "difference": None if paper is None else round(mean - paper, 3),
                "param_count": runs[0]["param_count"],
                "iterations": _single(r["iterations"] for r in runs),
                "batch_size": _single(r["batch_size"] for r in runs),
                "images_seen": _single(r["images_seen"] for r in runs),
                "reduced_budget": any(r["reduced_budget"] for r in runs),
                "wall_time_s": round(training_time(runs), 1),
                "commits": " ".join(sorted({r["commit"][:12] for r in runs})),
                "devices": "; ".join(sorted({r["device"] for r in runs})),
            }
        )
    order = {name: i for i, name in enumerate((*TABLE1_SETS, "tc"))}
    labels = {model_label(m, t): i for i, (m, t) in enumerate(TABLE1_ERROR)}
    return sorted(rows, key=lambda r: (r["profile"], order.get(r["data"], 99), labels.get(r["label"], 99)))


def training_time(runs: list[dict[str, Any]]) -> float:
    """Wall time spent training ``runs``: the sum over runs, with each stacked run counted once (its seeds'
    records all carry the whole stacked run's wall time, ``engine.shared_wall_time``)."""
    single, stacked = 0.0, {}
    for run in runs:
        engine = run.get("engine") or {}  # records made before the engine field are single runs
        if engine.get("shared_wall_time"):
            stacked[engine["stacked_dir"]] = run["wall_time_s"]
        else:
            single += run["wall_time_s"]
    return single + sum(stacked.values())


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def _cell_text(row: dict[str, Any] | None, paper: float | None) -> str:
    paper_text = "-" if paper is None else f"{paper:.1f}"
    if row is None:
        return f"not run ({paper_text})"
    spread = f" ± {row['error_std']:.2f}" if row["error_std"] is not None else ""
    return f"{row['error_mean']:.2f}{spread} ({paper_text})"


def to_markdown(rows: list[dict[str, Any]], profile: str) -> str:
    """Table 1 and the TC column in the paper's layout: ours ± std over seeds (paper), % test error."""
    rows = [r for r in rows if r["profile"] == profile]
    if not rows:
        raise ValueError(f"no finished runs of profile {profile!r}")
    by_key = {(r["data"], r["model"], r["transform"] or None): r for r in rows}
    reduced = any(r["reduced_budget"] for r in rows)
    lines = [f"# Distorted MNIST: % test error, profile `{profile}`", ""]
    if reduced:
        iterations = sorted({r["iterations"] for r in rows})
        batches = sorted({r["batch_size"] for r in rows})
        lines += [
            f"> **REDUCED BUDGET** — {', '.join(f'{i:,}' for i in iterations)} iterations of batch "
            f"{', '.join(map(str, batches))} per run, against the paper's 150,000 of 256. These numbers show that "
            "the code trains, not what it reaches at the paper's budget.",
            "",
        ]
    lines += [
        "Each cell: our mean ± sample std over seeds (the paper's number). Every model of a column has the "
        "same parameter budget; counts, seeds and provenance are in the CSV beside this file.",
        "",
        "| model | " + " | ".join(SET_LABELS[s] for s in (*TABLE1_SETS, "tc")) + " |",
        "|---" * (len(TABLE1_SETS) + 2) + "|",
    ]
    for model, transform in TABLE1_ERROR:
        cells = [
            _cell_text(by_key.get((s, model, transform)), paper_error(s, model, transform))
            for s in TABLE1_SETS
        ]
        tc_paper = paper_error("tc", model, transform)
        tc_row = by_key.get(("tc", model, transform))
        cells.append(_cell_text(tc_row, tc_paper) if (tc_row or tc_paper is not None) else "")
        lines.append(f"| {model_label(model, transform)} | " + " | ".join(cells) + " |")
    seeds = sorted({r["n_seeds"] for r in rows})
    lines += [
        "",
        f"- Runs: {sum(r['n_seeds'] for r in rows)} ({', '.join(map(str, seeds))} seed(s) per cell); "
        f"wall time {sum(r['wall_time_s'] for r in rows) / 3600:.2f} h in total.",
        f"- Commits: {', '.join(sorted({c for r in rows for c in r['commits'].split()}))}.",
        f"- Devices: {'; '.join(sorted({d for r in rows for d in r['devices'].split('; ')}))}.",
        f"- Made by `python -m experiments.table --profile {profile}` from the run records.",
    ]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out_dir: Path, profile: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    csv_path = out_dir / f"mnist_table1_{profile}.csv"
    md_path = out_dir / f"mnist_table1_{profile}.md"
    atomic_write_text(csv_path, to_csv([r for r in rows if r["profile"] == profile]))
    atomic_write_text(md_path, to_markdown(rows, profile))
    return csv_path, md_path


def _single(values):
    values = sorted(set(values))
    return values[0] if len(values) == 1 else " ".join(map(str, values))
