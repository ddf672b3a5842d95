"""Table 5 (co-localisation) from run records: % of each digit class's images localised, T and TC, against
the paper, as ``results/coloc_table5_<profile>.md`` (and ``.csv``; a ``_synthetic`` twin for runs on the
synthetic stand-in, never mixed with real MNIST runs)."""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from stn_analysis.tables.markdown import table_command
from stn_analysis.tables.write import publish_table
from stn_repro.io import file_sha256
from stn_repro.paper import COLOC_SET_LABELS, coloc_paper_localised, coloc_paper_text
from stn_repro.training.records import run_commits

COLOC_DATA = ("coloc_t", "coloc_tc")
DEFAULT_NEGATIVES = "crop"  # configs/coloc.yaml's coloc.negatives: the runs Table 5 is made of
DIGITS = tuple(range(10))
# e()'s kind (stn_repro.tasks.coloc.embedding.EMBEDDING_KINDS): each kind has a table of its own, the paper's
# (table1) under the plain name, the suite's first reading (plain: records made before the choice existed).
TABLE_STEM_SUFFIX = {"table1": "", "plain": "_plain_e"}
COLOC_CSV_COLUMNS = [
    "profile",
    "embedding",
    "embedding_data",
    "data",
    "digit",
    "synthetic",
    "negatives",
    "seeds",
    "n_seeds",
    "localised_mean",
    "localised_std",
    "paper_low",
    "paper_high",
    "num_images",
    "iterations",
    "batch_size",
    "reduced_budget",
    "embedding_test_error",
    "embedding_iterations",
    "embedding_profile",
    "embedding_run_dir",
    "embedding_wall_time_s",
    "embedding_devices",
    "embedding_commits",
    "wall_time_s",
    "commits",
    "devices",
]


def coloc_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (profile, synthetic, data, digit, negatives, iterations, batch size) of the finished
    co-localisation ``records``:
    % localised (100 - the record's % not localised), mean and sample std over seeds, the paper's range,
    provenance. Records made before the ``negatives`` choice existed used crops.

    The embedding's own cost (wall time, devices, commits) comes from its record where ``records`` hold it
    (an ``experiment: coloc_embedding`` record read with its ``path``, as :func:`~stn_repro.tables.collect_records`
    gives): the one whose weights have the sha256 the co-localisation records name."""
    embeddings = embedding_records_by_weights(records)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("experiment") == "coloc" and record.get("finished"):
            negatives = record.get("choices", {}).get("negatives", DEFAULT_NEGATIVES)
            key = (
                record["profile"],
                record["embedding"].get("kind", "plain"),
                record["embedding"].get("data"),
                bool(record.get("synthetic")),
                record["data"],
                record["digit"],
                negatives,
                record["iterations"],
                record["batch_size"],
            )
            groups[key].append(record)
    rows = []
    for (profile, kind, embedding_data, synthetic, data, digit, negatives, _, _), runs in sorted(
        groups.items(), key=lambda item: tuple(str(k) for k in item[0])
    ):
        runs = sorted(runs, key=lambda r: r["seed"])
        localised = [100.0 - r["test_error"] for r in runs]
        paper = coloc_paper_localised(data)
        used = [embeddings.get(r["embedding"].get("weights_sha256")) for r in runs]
        trained = [e for e in used if e is not None] if all(used) else []
        rows.append(
            {
                "profile": profile,
                "embedding": kind,
                "embedding_data": embedding_data,
                "data": data,
                "digit": digit,
                "synthetic": synthetic,
                "negatives": negatives,
                "seeds": " ".join(str(r["seed"]) for r in runs),
                "n_seeds": len(runs),
                "localised_mean": round(statistics.fmean(localised), 3),
                "localised_std": round(statistics.stdev(localised), 3) if len(runs) > 1 else None,
                "paper_low": paper["low"],
                "paper_high": paper["high"],
                "num_images": _single(r["test_set"]["size"] for r in runs),
                "iterations": _single(r["iterations"] for r in runs),
                "batch_size": _single(r["batch_size"] for r in runs),
                "reduced_budget": any(r["reduced_budget"] for r in runs),
                "embedding_test_error": _single(r["embedding"]["test_error"] for r in runs),
                "embedding_iterations": _single(r["embedding"].get("iterations") for r in runs),
                "embedding_profile": _single(r["embedding"].get("profile") for r in runs),
                "embedding_run_dir": _single(r["embedding"].get("run_dir") for r in runs),
                # None: an embedding record is not among ``records`` (its cost is then not stated).
                "embedding_wall_time_s": _single(e["wall_time_s"] for e in trained) if trained else None,
                "embedding_devices": "; ".join(sorted({d for e in trained for d in launch_devices(e)}))
                or None,
                "embedding_commits": " ".join(sorted(set().union(*(run_commits(e) for e in trained))))
                or None,
                "wall_time_s": round(sum(r["wall_time_s"] for r in runs), 1),
                "commits": " ".join(sorted(set().union(*(run_commits(r) for r in runs)))),
                "devices": "; ".join(sorted({r["device"] for r in runs})),
            }
        )
    return rows


def embedding_records_by_weights(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The finished embedding records among ``records`` that carry their ``path``, by the sha256 of the
    weights file beside them (what a co-localisation record's ``embedding.weights_sha256`` names)."""
    found = {}
    for record in records:
        if record.get("experiment") == "coloc_embedding" and record.get("finished") and record.get("path"):
            weights = Path(record["path"]).parent / record.get("weights", "model.pt")
            if weights.is_file():
                found[file_sha256(weights)] = record
    return found


def launch_devices(record: dict[str, Any]) -> list[str]:
    """Every device a run trained on: each launch's (a run resumed elsewhere has several), else its own."""
    return [launch["device"] for launch in record.get("launches") or []] or [record["device"]]


def table_length(rows: list[dict[str, Any]], length: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (iterations, batch size) of the runs that fill Table 5's cells: ``length`` (the profile's, as its
    trainer config gives) where known, else the most common among the default negatives' runs (the longer
    on a tie); ``None`` when there are none."""
    if length is not None:
        return tuple(length)
    counts = Counter((r["iterations"], r["batch_size"]) for r in rows if r["negatives"] == DEFAULT_NEGATIVES)
    return max(counts, key=lambda k: (counts[k], k)) if counts else None


def coloc_markdown(
    rows: list[dict[str, Any]],
    profile: str,
    synthetic: bool = False,
    length: tuple[int, int] | None = None,
    runs: str | None = None,
) -> str:
    """Table 5's layout: a row per digit class and the mean, a column per set; each cell ours (the paper).
    The cells are the runs of the default negatives and of the profile's ``length`` (iterations, batch size;
    see :func:`table_length`); runs of other negatives or another length are studies beside them."""
    rows = [r for r in rows if r["profile"] == profile and r["synthetic"] == synthetic]
    if not rows:
        kind = "synthetic " if synthetic else ""
        raise ValueError(f"no finished {kind}co-localisation runs of profile {profile!r}")
    length = table_length(rows, length)

    def in_table(r: dict[str, Any]) -> bool:
        return r["negatives"] == DEFAULT_NEGATIVES and (r["iterations"], r["batch_size"]) == length

    studies = [r for r in rows if not in_table(r)]
    by_key = {(r["data"], r["digit"]): r for r in rows if in_table(r)}
    title = "on the SYNTHETIC stand-in" if synthetic else "on MNIST"
    lines = [
        f"# Co-localisation (Table 5) {title}: % of images localised (IoU > 0.5), profile `{profile}`",
        "",
    ]
    if synthetic:
        lines += [
            "> **SYNTHETIC DATA** — seven-segment stand-in digits (tests and smoke runs), not MNIST. The paper's "
            "numbers (in brackets) are on MNIST: a reference for the layout, not a target.",
            "",
        ]
    if any(r["reduced_budget"] for r in rows):
        lines += [
            "> **REDUCED BUDGET** — the embedding CNN and/or the co-localisation optimisation ran shorter than "
            "the suite's `paper` profile (see the CSV for iterations); these numbers show what this budget "
            "gives, not what the full budget reaches.",
            "",
        ]
    lines += [
        "Each cell: our % of the class's images whose found box has IoU > 0.5 with the true box, mean ± sample "
        "std over seeds (the paper's number; for TC the paper gives only the range over classes, 75-93). "
        "`not run`: no finished run.",
        "",
        "| digit | " + " | ".join(COLOC_SET_LABELS[d] for d in COLOC_DATA) + " |",
        "|---" * (len(COLOC_DATA) + 1) + "|",
    ]
    for digit in DIGITS:
        cells = [_cell(by_key.get((data, digit)), coloc_paper_text(data)) for data in COLOC_DATA]
        lines.append(f"| {digit} | " + " | ".join(cells) + " |")
    means, complete_means = [], {}  # complete_means: the sets with every class run
    for data in COLOC_DATA:
        done = [by_key[(data, d)]["localised_mean"] for d in DIGITS if (data, d) in by_key]
        paper = coloc_paper_text(data)
        if not done:
            means.append(f"not run ({paper})")
        else:
            partial = "" if len(done) == len(DIGITS) else f", {len(done)} of 10 classes"
            means.append(f"**{statistics.fmean(done):.1f}**{partial} ({paper})")
            if not partial:
                complete_means[data] = statistics.fmean(done)
    lines.append("| **mean** | " + " | ".join(means) + " |")
    for negatives, iterations, batch_size in sorted(
        {(r["negatives"], r["iterations"], r["batch_size"]) for r in studies}
    ):
        study = [
            r
            for r in studies
            if (r["negatives"], r["iterations"], r["batch_size"]) == (negatives, iterations, batch_size)
        ]
        other_length = []
        if length is None or iterations != length[0]:
            other_length.append(f"{_count(iterations)} iterations")
        if length is None or batch_size != length[1]:
            other_length.append(f"batch {batch_size}")
        what = (
            _negatives_text(negatives)
            if negatives != DEFAULT_NEGATIVES
            else f"the table's negatives (`coloc.negatives={DEFAULT_NEGATIVES}`), another length"
        )
        column = negatives if negatives != DEFAULT_NEGATIVES else ", ".join(other_length)
        lines += [
            "",
            f"Study, NOT the default reading: {what}."
            + (f" Each ran {' of '.join(other_length)}." if other_length else "")
            + " These runs fill no cell above; each is shown beside the default's.",
            "",
            f"| set | digit | {column} | {DEFAULT_NEGATIVES} (above) | paper |",
            "|---|---|---|---|---|",
        ]
        for r in study:
            default = by_key.get((r["data"], r["digit"]))
            default_text = "not run" if default is None else _cell(default, "").removesuffix(" ()")
            lines.append(
                f"| {COLOC_SET_LABELS[r['data']]} | {r['digit']} | {_cell(r, '').removesuffix(' ()')} | "
                f"{default_text} | {coloc_paper_text(r['data'])} |"
            )
        for data in COLOC_DATA:  # a study of every class of a set: its mean beside the default's
            done = [r["localised_mean"] for r in study if r["data"] == data]
            if len(done) == len(DIGITS) and data in complete_means:
                lines.append(
                    f"| {COLOC_SET_LABELS[data]} | **mean** | **{statistics.fmean(done):.1f}** | "
                    f"**{complete_means[data]:.1f}** | {coloc_paper_text(data)} |"
                )
    embedding = sorted({_percent(r["embedding_test_error"]) for r in rows})
    embedding_iterations = sorted(
        {_count(r["embedding_iterations"]) for r in rows if r.get("embedding_iterations") is not None}
    )
    seeds = sorted({r["n_seeds"] for r in rows})
    embedding_cost = _embedding_cost_text(rows)
    lines += [
        "",
        f"- Runs: {sum(r['n_seeds'] for r in rows)} ({', '.join(map(str, seeds))} seed(s) per cell) of "
        f"{', '.join(sorted({str(r['num_images']) for r in rows}))} images each; "
        f"{', '.join(sorted({str(r['iterations']) for r in rows}))} iterations of batch "
        f"{', '.join(sorted({str(r['batch_size']) for r in rows}))}; wall time "
        f"{sum(r['wall_time_s'] for r in rows) / 3600:.2f} h in total (the embedding's own training not counted here: next line).",
        _embedding_line(rows, embedding, embedding_iterations, embedding_cost),
        f"- Commits: {', '.join(sorted({c for r in rows for c in r['commits'].split()}))}.",
        f"- Devices: {'; '.join(sorted({d for r in rows for d in r['devices'].split('; ')}))}.",
        f"- Made by `{table_command('coloc', profile, runs)}` from the run records.",
    ]
    return "\n".join(lines) + "\n"


def _embedding_line(rows, errors: list[str], iterations: list[str], cost: str) -> str:
    """What e() was: a Table 1 CNN run (the paper's) or the suite's CNN on undistorted digits."""
    done = f" after {', '.join(iterations)} iterations" if iterations else ""
    if {r["embedding"] for r in rows} == {"plain"}:
        return (
            f"- Embedding e() (Sect. 2 CNN on undistorted digits): {', '.join(errors)} % test error{done}"
            f" (the Sect. 2 protocol: 150,000 of 256); {cost}."
        )
    sets = ", ".join(sorted({str(r["embedding_data"]).upper() for r in rows}))
    profiles = ", ".join(sorted({f"`{r['embedding_profile']}`" for r in rows}))
    runs = ", ".join(sorted({f"`{r['embedding_run_dir']}`" for r in rows}))
    return (
        f"- Embedding e() (the paper's: a Table 1 CNN, trained on distorted MNIST {sets} under {profiles}): "
        f"{', '.join(errors)} % test error on {sets}{done} (the paper's protocol: 150,000 of 256); the run "
        f"{runs}, trained once for Table 1 (its cost is Table 1's)."
    )


def _embedding_cost_text(rows: list[dict[str, Any]]) -> str:
    if any(r.get("embedding_wall_time_s") is None for r in rows):
        return "its training time is not given: its record is not under the records folder this table is made from"
    hours = sorted({float(h) for r in rows for h in str(r["embedding_wall_time_s"]).split()})
    devices = sorted({d for r in rows for d in r["embedding_devices"].split("; ")})
    commits = sorted({c for r in rows for c in r["embedding_commits"].split()})
    return (
        f"trained in {', '.join(f'{h / 3600:.2f}' for h in hours)} h wall time on {'; '.join(devices)} "
        f"(commits {', '.join(commits)})"
    )


WINDOW_TEXT = "a window of the transformer's own scale at a random place inside the image"


def _negatives_text(label: str) -> str:
    """What a study's negatives were, from their label (``window``, ``crop_then_window1000``, ...)."""
    if label == "window":
        return f"`coloc.negatives=window` (I_n^rand {WINDOW_TEXT})"
    if label.startswith("crop_then_window"):
        step = label.removeprefix("crop_then_window")
        return (
            f"`coloc.negatives=crop_then_window coloc.window_from={step}` (I_n^rand a 28 px crop for the "
            f"first {step} steps, then {WINDOW_TEXT})"
        )
    return f"`coloc.negatives={label}`"


def _cell(row: dict[str, Any] | None, paper: str) -> str:
    if row is None:
        return f"not run ({paper})"
    spread = f" ± {row['localised_std']:.1f}" if row["localised_std"] is not None else ""
    return f"{row['localised_mean']:.1f}{spread} ({paper})"


def coloc_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLOC_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in COLOC_CSV_COLUMNS})
    return buffer.getvalue()


def write_coloc_tables(
    records: list[dict[str, Any]],
    out_dir: Path,
    profile: str,
    length: tuple[int, int] | None = None,
    runs: str | None = None,
    force: bool = False,
) -> list[tuple[Path, Path]]:
    """Write ``coloc_table5_<profile>.{csv,md}`` for runs with the paper's e() (``..._plain_e`` for the old e(),
    ``..._synthetic`` for synthetic runs); return the pairs.
    ``length``: the profile's (iterations, batch size), whose runs fill the cells (:func:`coloc_markdown`);
    ``force``: as :func:`~stn_analysis.tables.write.publish_table`."""
    rows = [r for r in coloc_rows(records) if r["profile"] == profile]
    if not rows:
        raise ValueError(f"no finished co-localisation runs of profile {profile!r}")
    written = []
    for synthetic, kind in sorted({(r["synthetic"], r["embedding"]) for r in rows}):
        stem = f"coloc_table5_{profile}{TABLE_STEM_SUFFIX[kind]}" + ("_synthetic" if synthetic else "")
        mine = [r for r in rows if (r["synthetic"], r["embedding"]) == (synthetic, kind)]
        markdown = coloc_markdown(mine, profile, synthetic, length, runs)
        written.append(publish_table(out_dir, stem, coloc_csv(mine), markdown, force))
    return written


def _percent(value) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else str(value)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _single(values):
    values = sorted(set(values), key=str)
    return values[0] if len(values) == 1 else " ".join(map(str, values))
