"""Tables against the paper, built from run records (``record.json``), as CSV and Markdown."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stn_analysis.records import record_cell
from stn_repro.data.distortions import VARIANT_SETS
from stn_repro.io import atomic_write_text
from stn_repro.paper import (
    CUB_ROWS,
    SVHN_MODEL_LABELS,
    TABLE1_ERROR,
    TABLE1_SETS,
    TABLE2_ERROR,
    TABLE2_OTHERS,
    TABLE3_ACCURACY,
    TABLE3_OTHERS,
    TABLE4_ROWS,
    addition_model_label,
    addition_paper_error,
    addition_secondary_error,
    cub_model_label,
    model_label,
    paper_error,
)
from stn_repro.training.records import collapsed, run_commits

CSV_COLUMNS = [
    "experiment",
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
    "budget_reading",
    "test_set_check",
    "collapsed_seeds",
    "seeds_reaching_paper",
    "images_to_paper",
    "time_to_paper_s",
    "recipe",
]
SET_LABELS = {"r": "R", "rts": "RTS", "p": "P", "e": "E", "tc": "TC 60x60"}
# The study sets (stn_repro.data.distortions.VARIANT_SETS): what each changes in the paper set it varies.
VARIANT_LABELS = {"p_4px": "P with N(0, 4 px) corner offsets instead of the spec's 5 px"}
EXPERIMENTS = ("mnist", "svhn", "addition", "cub")
SVHN_ROWS = ("cnn", "st_cnn_single", "st_cnn_multi")


def first_reaching(history: list[dict[str, Any]], target: float, key: str = "val_error") -> dict | None:
    """The first history entry whose ``key`` is at or below ``target`` (e.g. the paper's error), or ``None``."""
    for entry in history or []:
        if key in entry and entry[key] <= target:
            return entry
    return None


# Optimiser settings that only reach a localisation net.
LOCALISATION_OPTIM_KEYS = ("localisation_lr_multiplier",)


# What a record says at its top level of its training's length, against the profile's ``trainer.<key>``.
TRAINER_LENGTH_KEYS = ("iterations", "batch_size")


def recipe_deviation(record: dict[str, Any], profile_settings: dict[str, Any] | None) -> str:
    """The settings in which ``record`` departs from its profile's own (``profile_settings``: the ``optim``
    the profile composes, plus ``trainer.iterations`` and ``trainer.batch_size``), as ``"key=value"`` pairs
    joined by ``", "``; ``""`` where it follows the profile or no ``profile_settings`` are given. A key the
    record lacks (written before the setting existed) counts as the profile's; a model without a transformer
    ignores the localisation net's settings."""
    if not profile_settings:
        return ""
    optim = (record.get("config") or {}).get("optim") or {}
    # A model without a transformer has no localisation net: its settings for one change nothing.
    unused = () if record.get("transform") else LOCALISATION_OPTIM_KEYS
    differ = [
        f"{key}={optim[key]}"
        for key in sorted(optim)
        if key in profile_settings and key not in unused and optim[key] != profile_settings[key]
    ]
    # A shorter (or longer) run than the profile's is another recipe too, however its optimiser was set.
    differ += [
        f"trainer.{key}={record[key]}"
        for key in TRAINER_LENGTH_KEYS
        if f"trainer.{key}" in profile_settings
        and key in record
        and record[key] != profile_settings[f"trainer.{key}"]
    ]
    return ", ".join(differ)


def aggregate(
    records: list[dict[str, Any]], profile_optims: dict[tuple, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per (experiment, profile, budget reading, data, model, transform, recipe): mean and sample std
    over seeds, the paper's number and provenance. ``profile_optims`` maps (experiment, profile, cell) to the
    optimiser settings and training length that profile composes for the cell
    (:func:`stn_analysis.bookkeeping.missing.profile_optims`): runs trained with other settings (a per-cell override such
    as ``optim.localisation_lr_multiplier=0.03``, or ``trainer.iterations=3000``) form
    rows of their own, whose ``recipe`` names the difference (:func:`recipe_deviation`), and the tables show
    them apart, never averaged with the profile's runs."""
    profile_optims = profile_optims or {}
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        experiment = record.get("experiment", "mnist")  # records made before the field are MNIST's
        reading = record.get("budget_reading", "about_400k") if experiment == "mnist" else ""
        expected = profile_optims.get((experiment, record["profile"], record_cell(record)))
        recipe = recipe_deviation(record, expected)
        key = (experiment, record["profile"], reading, record["data"], record["model"], record["transform"])
        groups[(*key, recipe)].append(record)
    rows = []
    for (experiment, profile, reading, data, model, transform, recipe), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        errors = [r["test_error"] for r in runs]
        mean = statistics.fmean(errors)
        if experiment == "mnist":
            paper, label = paper_error(data, model, transform), model_label(model, transform)
        elif experiment == "addition":
            paper, label = addition_paper_error(model, transform), addition_model_label(model, transform)
        elif experiment == "cub":  # paper_error: 100 - the paper's Table 3 accuracy
            paper, label = runs[0].get("paper_error"), cub_model_label(model, runs[0]["size"])
        else:
            paper, label = runs[0].get("paper_error"), SVHN_MODEL_LABELS.get(model, model)
        rows.append(
            {
                "experiment": experiment,
                "profile": profile,
                "data": data,
                "model": model,
                "transform": transform or "",
                "label": label,
                "size": runs[0].get("size"),
                "synthetic": bool(runs[0].get("synthetic")),
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
                "commits": " ".join(sorted(set().union(*(run_commits(r) for r in runs)))),
                "devices": "; ".join(sorted({r["device"] for r in runs})),
                "budget_reading": reading,
                "test_set_check": _test_set_check(runs),
                "collapsed_seeds": sum(collapsed(r) for r in runs),
                "recipe": recipe,
                # A study set's runs are timed to the paper's number on the set it varies (its lines say so).
                **_reaching_paper(
                    runs, paper_error(VARIANT_SETS[data], model, transform) if data in VARIANT_SETS else paper
                ),
            }
        )
        if experiment == "cub":
            rows[-1]["pretrained"] = sorted({_cub_initialisation(r.get("pretrained")) for r in runs})
    order = {name: i for i, name in enumerate((*TABLE1_SETS, "tc", *VARIANT_SETS))}
    labels = {model_label(m, t): i for i, (m, t) in enumerate(TABLE1_ERROR)}
    svhn_models = {m: i for i, m in enumerate(SVHN_ROWS)}
    addition_rows = {row: i for i, row in enumerate(TABLE4_ROWS)}
    cub_rows = {row: i for i, row in enumerate(CUB_ROWS)}

    def row_order(r: dict[str, Any]) -> int:
        if r["experiment"] == "cub":
            return cub_rows.get((r["model"], r["size"]), 99)
        if r["experiment"] == "addition":
            return addition_rows.get((r["model"], r["transform"] or None), 99)
        return labels.get(r["label"], svhn_models.get(r["model"], 99))

    return sorted(
        rows,
        key=lambda r: (
            EXPERIMENTS.index(r["experiment"]) if r["experiment"] in EXPERIMENTS else 99,
            r["profile"],
            order.get(r["data"], r["size"] or 99),
            row_order(r),
            r["recipe"],
        ),
    )


def _test_set_check(runs: list[dict[str, Any]]) -> str:
    """``"same"``, ``"differs (k of n)"``, ``"rescored (k of n)"`` (the others the same) or ``"not checked"``
    (see :func:`mark_test_set_changes`)."""
    changed = [r.get("test_set_changed") for r in runs]
    if any(c is None for c in changed):
        return "not checked"
    if any(changed):
        return f"differs ({sum(changed)} of {len(changed)})"
    rescored = sum(bool(r.get("test_set_rescored")) for r in runs)
    return f"rescored ({rescored} of {len(runs)})" if rescored else "same"


def _reaching_paper(runs: list[dict[str, Any]], paper: float | None) -> dict[str, Any]:
    """For runs with a validation history: how many seeds' validation error reached the paper's test error,
    and the mean images and training time (s) until it first did, over those seeds."""
    reached = [
        (entry, run)
        for run in runs
        if paper is not None and (entry := first_reaching(run.get("history") or [], paper)) is not None
    ]
    validated = any("val_error" in e for r in runs for e in (r.get("history") or []))
    if not validated:
        return {"seeds_reaching_paper": None, "images_to_paper": None, "time_to_paper_s": None}
    # The run's training time pro rata to the iteration (evaluations included): histories hold no clock
    # times, so that a resumed run's history is the same as an uninterrupted one's.
    times = [r["wall_time_s"] * e["iteration"] / r["iterations"] for e, r in reached]
    return {
        "seeds_reaching_paper": len(reached),
        "images_to_paper": round(statistics.fmean(e["iteration"] * r["batch_size"] for e, r in reached))
        if reached
        else None,
        "time_to_paper_s": round(statistics.fmean(times), 1) if times else None,  # pro rata
    }


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


TEST_SET_CHANGED_MARK = "†"


def _cell_text(row: dict[str, Any] | None, paper: float | None) -> str:
    paper_text = "-" if paper is None else f"{paper:.1f}"
    if row is None:
        return f"not run ({paper_text})"
    spread = f" ± {row['error_std']:.2f}" if row["error_std"] is not None else ""
    return f"{row['error_mean']:.2f}{spread}{_changed_mark(row, TEST_SET_CHANGED_MARK)} ({paper_text})"


def _changed_mark(row: dict[str, Any], mark: str) -> str:
    """``mark`` where some seed of the row was scored on another test set than today's, then
    :data:`COLLAPSED_MARK` where some seed's localisation net collapsed; ``""`` for neither."""
    changed = mark if row.get("test_set_check", "").startswith("differs") else ""
    return changed + (COLLAPSED_MARK if row.get("collapsed_seeds") else "")


COLLAPSED_MARK = "§"


def _collapse_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table's note on cells with a run whose transformer collapsed to one fixed warp (marked §)."""
    hit = [r for r in rows if r.get("collapsed_seeds")]
    if not hit:
        return []
    cells = ", ".join(f"{_cell_name(r)} ({r['collapsed_seeds']} of {r['n_seeds']})" for r in hit)
    return [
        "",
        f"{COLLAPSED_MARK} A run of the cell ({cells}) ended with a localisation net that predicts the same "
        "transform for every test image (`localisation_spread` 0 in its record: dead hidden units), so its "
        "transformer is a fixed warp and the number is not a spatial transformer's.",
    ]


def _runs_of(
    rows: list[dict[str, Any]],
    experiment: str,
    profile: str,
    name: str,
    synthetic: bool | None = None,
    reading: str | None = None,
    recipe: str | None = "",
) -> list[dict[str, Any]]:
    """The rows of one experiment and profile (and, unless ``None``, of the synthetic stand-in or not, of
    one budget reading, and of one recipe: by default the profile's own); a ``ValueError`` naming ``name``
    when there are none."""
    chosen = [
        r
        for r in rows
        if r["experiment"] == experiment
        and r["profile"] == profile
        and (synthetic is None or r["synthetic"] == synthetic)
        and (reading is None or r.get("budget_reading") == reading)
        and (recipe is None or r.get("recipe", "") == recipe)
    ]
    if not chosen:
        kind = "synthetic " if synthetic else ""
        raise ValueError(f"no finished {kind}{name}runs of profile {profile!r}")
    return chosen


def _budget(rows: list[dict[str, Any]]) -> str:
    """``"1,500 iterations of batch 64"``: the budgets of ``rows``, each list comma-separated."""
    iterations = ", ".join(f"{i:,}" for i in sorted({r["iterations"] for r in rows}))
    batches = ", ".join(map(str, sorted({r["batch_size"] for r in rows})))
    return f"{iterations} iterations of batch {batches}"


BUDGET_READINGS = {
    "about_400k": "about 400k parameters for every model of every data set",
    "width_ranges": "one budget per data set, solved so that the most models have the paper's widths "
    "(FCN 128-256 units, CNN 32-64 filters): R, P, E 208,586; RTS 222,026; TC 251,672; the plain FCN "
    "of RTS and TC cannot be in range",
}


def mnist_table_stem(profile: str, reading: str) -> str:
    """``mnist_table1_<profile>`` for the default budget reading, ``..._<reading>`` for another."""
    return f"mnist_table1_{profile}" + ("" if reading == "about_400k" else f"_{reading}")


def to_markdown(
    rows: list[dict[str, Any]], profile: str, reading: str = "about_400k", runs: str | None = None
) -> str:
    """Table 1 and the TC column in the paper's layout: ours ± std over seeds (paper), % test error. Runs
    trained with other optimiser settings than the profile's (rows with a ``recipe``) get a section of their
    own below it."""
    rows_all, rows = rows, _runs_of(rows, "mnist", profile, "", reading=reading)
    other_recipes = [
        r for r in _runs_of(rows_all, "mnist", profile, "", reading=reading, recipe=None) if r["recipe"]
    ]
    shown = rows + other_recipes
    by_key = {(r["data"], r["model"], r["transform"] or None): r for r in rows}
    lines = [f"# Distorted MNIST: % test error, profile `{profile}`", ""]
    lines += _budget_banner(
        rows,
        profile,
        "the paper's 150,000 of 256",
        "55k training digits",
        "; configs/trainer/fast.yaml gives the TC cells' localisation nets a lower lr",
    )
    lines += [
        "Each cell: our mean ± sample std over seeds (the paper's number). Every model of a column has the "
        f"same parameter budget (reading `{reading}`: {BUDGET_READINGS.get(reading, reading)}); counts, seeds "
        "and provenance are in the CSV beside this file.",
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
    lines += _variant_lines(by_key)
    lines += _recipe_lines(other_recipes, by_key)
    lines += _reaching_lines(shown, _cell_name, "the paper trains on 38.4M images per cell")
    lines += _test_set_lines(shown, TEST_SET_CHANGED_MARK)
    lines += _collapse_lines(shown)
    lines += _provenance_lines(shown, table_command("mnist", profile, runs))
    return "\n".join(lines) + "\n"


def _ours_text(row: dict[str, Any] | None) -> str:
    """A row's ``mean ± std`` with its marks and no paper number (``"not run"`` for ``None``)."""
    return _cell_text(row, None).removesuffix(" (-)") if row else "not run"


def _cell_name(row: dict[str, Any]) -> str:
    """``"tc ST-CNN Aff"``, with `` (<recipe>)`` for a run of other settings than its profile's."""
    return f"{row['data']} {row['label']}" + (f" ({row['recipe']})" if row.get("recipe") else "")


def _recipe_lines(other: list[dict[str, Any]], by_key: dict[tuple, dict[str, Any]]) -> list[str]:
    """The cells also trained with optimiser settings or a length other than the profile's (``other``), each beside ours
    with the profile's settings and the paper's number."""
    if not other:
        return []
    lines = [
        "",
        "Other settings (optimiser or length), NOT THIS PROFILE'S RECIPE: cells also trained with the settings named per "
        "row (the rest as the profile). They fill no cell above; each is shown beside ours with the profile's "
        "settings and the paper's number.",
        "",
        "| set | model | settings | ours | ours (profile's settings) | paper |",
        "|---|---|---|---|---|---|",
    ]
    for r in other:
        key = (r["data"], r["model"], r["transform"] or None)
        ours, base = _ours_text(r), _ours_text(by_key.get(key))
        paper = paper_error(r["data"], r["model"], r["transform"] or None)
        paper_text = "-" if paper is None else f"{paper:.1f}"
        label = SET_LABELS.get(r["data"], r["data"])
        lines.append(f"| {label} | {r['label']} | `{r['recipe']}` | {ours} | {base} | {paper_text} |")
    return lines


def _variant_lines(by_key: dict[tuple, dict[str, Any]]) -> list[str]:
    """The cells trained on a study set (not a Table 1 cell), each beside ours and the paper's number on the
    paper set it varies."""
    lines = []
    for variant, base in VARIANT_SETS.items():
        cells = [(m, t) for m, t in TABLE1_ERROR if (variant, m, t) in by_key]
        if not cells:
            continue
        lines += [
            "",
            f"Study set `{variant}`, NOT THE PAPER'S RECIPE: {VARIANT_LABELS[variant]} (configs/data/"
            f"{variant}.yaml). Its runs fill no cell above; each is shown beside ours and the paper's on "
            f"{SET_LABELS[base]}.",
            "",
            f"| model | {variant} (ours) | {SET_LABELS[base]} (ours) | {SET_LABELS[base]} (paper) |",
            "|---|---|---|---|",
        ]
        for model, transform in cells:
            ours = _ours_text(by_key[(variant, model, transform)])
            base_row = by_key.get((base, model, transform))
            base_text = _ours_text(base_row)
            paper = paper_error(base, model, transform)
            paper_text = "-" if paper is None else f"{paper:.1f}"
            lines.append(f"| {model_label(model, transform)} | {ours} | {base_text} | {paper_text} |")
    return lines


def _test_set_lines(rows: list[dict[str, Any]], mark: str) -> list[str]:
    """The table's notes on cells scored on another test set (marked ``mark``) and on unchecked cells."""
    lines = []
    changed = [r for r in rows if r["test_set_check"].startswith("differs")]
    if changed:
        cells = ", ".join(
            f"{r['data']}-{r['model']}-{r['transform'] or 'none'} {r['test_set_check']}" for r in changed
        )
        lines += [
            "",
            f"{mark} Scored on a test set whose sha256 differs from the one built here ({cells}): it was "
            "built by another generator version or on another CPU (a few pixels one grey level apart; see "
            "stn_repro.data.sets.STORED_SET_DTYPE). Rescore the weights on today's sets (`stn-rescore`), "
            "or rerun, before comparing closely.",
        ]
    rescored = [r for r in rows if r["test_set_check"].startswith("rescored")]
    if rescored:
        lines += [
            "",
            f"- Scored again on the test set built here from their saved weights, {len(rescored)} cell(s) "
            "(their runs were scored on a set of another generator version or built on another CPU; "
            "`stn-rescore --write`): the table shows that score, each run's own is in its "
            "record.",
        ]
    unchecked = sum(r["test_set_check"] == "not checked" for r in rows)
    if unchecked:
        lines += [
            "",
            f"- Test-set checksums not checked for {unchecked} cell(s): no set built here to compare with "
            "(`make data-mnist`), or a synthetic set.",
        ]
    return lines


PAPER_IMAGES_PER_CELL = 150_000 * 256
"""The images of the paper's Table 1 schedule (150,000 iterations of 256): the reference of the fast
profile's images until the paper's error was reached."""


def _budget_banner(
    rows: list[dict[str, Any]], profile: str, against: str, digits: str, optim_note: str = ""
) -> list[str]:
    """The banner above a table whose runs are not the paper's protocol: the ``fast`` profile's (on
    ``digits`` of training, 5k held out for validation), else a reduced budget's; ``against`` names the
    paper's budget, ``optim_note`` what the profile sets beyond its optimiser file. Empty for the paper's."""
    if profile == "fast":
        return [
            f"> **FAST PROFILE, NOT THE PAPER'S PROTOCOL** — the paper's data, models and budgets trained with "
            f"another optimisation (configs/optim/sgd_fast.yaml{optim_note}) for {_budget(rows)} per run, "
            f"against {against}, "
            f"on {digits} (5k held out for validation).",
            "",
        ]
    if any(r["reduced_budget"] for r in rows):
        return [
            f"> **REDUCED BUDGET** — {_budget(rows)} per run, against {against}. These numbers show what "
            "so small a budget gives, not what the models reach at the paper's budget.",
            "",
        ]
    return []


def _reaching_lines(
    rows: list[dict[str, Any]], cell: Callable[[dict[str, Any]], str], reference: str
) -> list[str]:
    """Where runs held out validation digits: per cell (named by ``cell(row)``), the images and time until
    the validation error first reached the paper's test error; ``reference`` says what the paper's images
    per cell are (:data:`PAPER_IMAGES_PER_CELL`, the percentages' base). A cell without a paper number says so."""
    validated = [r for r in rows if r.get("seeds_reaching_paper") is not None]
    if not validated:
        return []
    lines = [
        "",
        "Images (and training time) until the validation error first reached the paper's test error, mean over "
        f"the seeds that reached it; {reference}.",
        "",
        "| cell | seeds reaching | images | % of the paper's | time |",
        "|---|---|---|---|---|",
    ]
    for r in validated:
        if r["data"] in VARIANT_SETS:
            r = {**r, "label": f"{r['label']} (to the paper's {SET_LABELS[VARIANT_SETS[r['data']]]} number)"}
        elif r["paper_error"] is None:
            lines.append(f"| {cell(r)} | no paper number | - | - | - |")
            continue
        images = r["images_to_paper"]
        lines.append(
            f"| {cell(r)} | {r['seeds_reaching_paper']} of {r['n_seeds']} | "
            + (
                f"{images:,} | {100 * images / PAPER_IMAGES_PER_CELL:.2f}% | "
                if images is not None
                else "- | - | "
            )
            + (f"{r['time_to_paper_s'] / 60:.1f} min |" if r["time_to_paper_s"] is not None else "- |")
        )
    return lines


def svhn_markdown(rows: list[dict[str, Any]], profile: str, synthetic: bool, runs: str | None = None) -> str:
    """Table 2 in the paper's layout: ours ± std over seeds (paper), % sequence error, at 64 and 128 px."""
    rows = _runs_of(rows, "svhn", profile, "SVHN ", synthetic)
    by_key = {(r["model"], r["size"]): r for r in rows}
    source = "the SYNTHETIC stand-in" if synthetic else "SVHN"
    lines = [f"# SVHN multi-digit on {source}: % sequence error, profile `{profile}`", ""]
    if synthetic:
        lines += [
            "> **SYNTHETIC DATA** — house-number-like images built from MNIST digits (`make "
            "data-svhn-synthetic`), not SVHN, which cannot be fetched where these runs were made. The paper's "
            "numbers (in brackets) are on real SVHN: a reference for the layout, not a target.",
            "",
        ]
    if any(r["reduced_budget"] for r in rows):
        lines += [
            f"> **REDUCED BUDGET** — {_budget(rows)} per run with narrower models "
            "(see the parameter counts), against the paper's 400,000 of 128 at full width. These numbers "
            "show how the three models compare under the same small budget, not what they reach at the "
            "paper's.",
            "",
        ]
    sizes = (64, 128)
    lines += [
        "Each cell: our mean ± sample std over seeds (the paper's number); `-`: the paper reports none.",
        "",
        "| model | " + " | ".join(f"{size}px" for size in sizes) + " | parameters |",
        "|---" * (len(sizes) + 2) + "|",
    ]
    paper_rows = [("Maxout CNN (Goodfellow et al.)", None), ("cnn", "CNN")]
    paper_rows += [("DRAM (Ba et al., model + MC averaging)", None)]
    paper_rows += [(m, SVHN_MODEL_LABELS[m]) for m in SVHN_ROWS[1:]]
    for key, label in paper_rows:
        if label is None:  # a row of the paper's table that is not a model of this suite
            cells = [f"- ({TABLE2_OTHERS[key][s]:.1f})" if s in TABLE2_OTHERS[key] else "" for s in sizes]
            lines.append(f"| {key} | " + " | ".join(cells) + " | |")
            continue
        cells = [_cell_text(by_key.get((key, s)), TABLE2_ERROR.get((key, s))) for s in sizes]
        counts = sorted({f"{by_key[(key, s)]['param_count']:,}" for s in sizes if (key, s) in by_key})
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {', '.join(counts)} |")
    lines += _collapse_lines(rows)
    lines += _provenance_lines(rows, table_command("svhn", profile, runs))
    return "\n".join(lines) + "\n"


ADDITION_TEST_SET_CHANGED_MARK = "‡"  # † already marks the paper's unnamed ST-FCN number in Table 4


def addition_markdown(rows: list[dict[str, Any]], profile: str, runs: str | None = None) -> str:
    """Table 4 (MNIST addition): ours ± std over seeds beside the paper's number and, apart, the secondary
    sources' numbers, % error; one row per model and transform."""
    rows = _runs_of(rows, "addition", profile, "MNIST addition ")
    by_key = {(r["model"], r["transform"] or None): r for r in rows}
    lines = [f"# MNIST addition: % test error, profile `{profile}`", ""]
    lines += _budget_banner(
        rows,
        profile,
        "the 150,000 of 256 of the paper's Table 1 schedule (the paper gives addition none of its own)",
        "pairs of 55k training digits",
    )
    if any(r["synthetic"] for r in rows):
        lines += [
            "> **SYNTHETIC DIGITS** — some runs trained and were scored on generated seven-segment digits "
            "(`data.source=synthetic`, for smoke tests), not MNIST.",
            "",
        ]
    lines += [
        "Two RTS-distorted digits, one per 42x42 channel; the label is their sum (19 classes). Ours: mean ± "
        "sample std over seeds. Paper: the paper's text; secondary: transcriptions of its appendix that the "
        "spec could not confirm. `-`: none reported. Every model has the same parameter budget.",
        "",
        "| model | ours | paper | secondary | parameters |",
        "|---|---|---|---|---|",
    ]
    for model, transform in TABLE4_ROWS:
        row = by_key.get((model, transform))
        paper = addition_paper_error(model, transform)
        secondary = addition_secondary_error(model, transform)
        ours = "not run"
        if row is not None:
            spread = f" ± {row['error_std']:.2f}" if row["error_std"] is not None else ""
            ours = f"{row['error_mean']:.2f}{spread}{_changed_mark(row, ADDITION_TEST_SET_CHANGED_MARK)}"
        paper_text = "-" if paper is None else f"{paper:.1f}"
        if (model, transform) == ("st_fcn", "affine"):
            paper_text += " †"
        secondary_text = "-" if secondary is None else f"{secondary:.1f}"
        count = "" if row is None else f"{row['param_count']:,}"
        label = addition_model_label(model, transform)
        lines.append(f"| {label} | {ours} | {paper_text} | {secondary_text} | {count} |")
    lines += [
        "",
        "† The paper gives 18.5 for the single-transformer ST-FCN without naming its transform; it is shown "
        "on the affine row (the suite's default single transformer). The secondary sources give ST-FCN Aff "
        "22.6, which would put 18.5 on the projective or TPS row.",
    ]
    lines += _reaching_lines(
        rows,
        lambda r: r["label"],
        "the paper's Table 1 schedule, which the `paper` profile runs, is 38.4M images per cell (the paper "
        "gives addition none); ST-FCN Aff is held to 18.5 (†)",
    )
    lines += _test_set_lines(rows, ADDITION_TEST_SET_CHANGED_MARK)
    lines += _collapse_lines(rows)
    lines += _provenance_lines(rows, table_command("addition", profile, runs))
    return "\n".join(lines) + "\n"


CUB_FROM_CNN = "the 224px CNN's"  # the weights column of ST-CNNs started from the profile's own CNN run


def _cub_initialisation(pretrained: Any) -> str:
    """A CUB record's ``pretrained`` in the table's weights column."""
    if isinstance(pretrained, str) or pretrained is None:
        return "from scratch"
    return CUB_FROM_CNN if pretrained.get("source") == "cub_cnn" else "ImageNet"


def cub_markdown(rows: list[dict[str, Any]], profile: str, synthetic: bool, runs: str | None = None) -> str:
    """Table 3 in the paper's layout: % top-1 accuracy (100 - the recorded % top-1 error), ours ± std over
    seeds beside the paper's, the other methods' rows for reference."""
    rows = _runs_of(rows, "cub", profile, "CUB ", synthetic)
    by_key = {(r["model"], r["size"]): r for r in rows}
    source = "the SYNTHETIC stand-in" if synthetic else "CUB-200-2011"
    lines = [f"# Fine-grained birds on {source}: % top-1 accuracy, profile `{profile}`", ""]
    if synthetic:
        lines += [
            '> **SYNTHETIC DATA** — generated "birds" whose class is the pair of two small textured parts, on '
            "cluttered backgrounds (`make data-cub-synthetic`), not CUB-200-2011, which cannot be fetched where "
            "these runs were made. The paper's numbers are on real CUB: a reference for the layout, not a target.",
            "",
        ]
    if any(r["reduced_budget"] for r in rows):
        lines += [
            f"> **REDUCED BUDGET** — {_budget(rows)} per run with narrower, smaller "
            "models (see the parameter counts), against the paper profile's 30,000 of 64 at full width and "
            "size. These numbers show how the models compare under the same small budget, not what they "
            "reach at the paper's.",
            "",
        ]
    if any("from scratch" in r.get("pretrained", []) for r in rows):
        lines += [
            "> **FROM SCRATCH** — some runs started without ImageNet weights (see the weights column); the "
            "paper fine-tunes an ImageNet-pretrained BN-Inception.",
            "",
        ]
    if any(CUB_FROM_CNN in r.get("pretrained", []) for r in rows):
        lines += [
            f'> **STARTED FROM THE CNN** — the ST-CNNs whose weights column says "{CUB_FROM_CNN}" started every '
            "backbone (the localisation net's and each part's) from the CNN row's trained backbone of the "
            "same seed, where the paper starts them from ImageNet weights, which these machines do not have: "
            "their iterations come on top of the CNN's.",
            "",
        ]
    lines += [
        "Ours: mean ± sample std over seeds of the % top-1 accuracy on the test split (100 - the recorded % "
        "top-1 error); `-`: not a model of this suite.",
        "",
        "| model | ours | paper | parameters | weights |",
        "|---|---|---|---|---|",
    ]
    for name, accuracy in TABLE3_OTHERS.items():
        lines.append(f"| {name} | - | {accuracy:.1f} | | |")
    for model, size in CUB_ROWS:
        row = by_key.get((model, size))
        ours, count, weights = "not run", "", ""
        if row is not None:
            spread = f" ± {row['error_std']:.2f}" if row["error_std"] is not None else ""
            ours = f"{100.0 - row['error_mean']:.2f}{spread}"
            count, weights = f"{row['param_count']:,}", ", ".join(row.get("pretrained", []))
        paper = TABLE3_ACCURACY[(model, size)]
        lines.append(f"| {cub_model_label(model, size)} | {ours} | {paper:.1f} | {count} | {weights} |")
    lines += [
        "",
        "The paper: 22 of the test images are also in ImageNet; without them 4xST-CNN 448px scores 84.0.",
    ]
    lines += _provenance_lines(rows, table_command("cub", profile, runs))
    return "\n".join(lines) + "\n"


def table_command(experiment: str, profile: str, runs: str | None = None) -> str:
    """The command that writes the table; ``runs`` is the records folder where it was not the default
    (``$STN_RUNS/<experiment>``), so a reader can make the same table again."""
    return " ".join(
        ["stn-table"]
        + ([f"--experiment {experiment}"] if experiment != "mnist" else [])
        + ([f"--runs {runs}"] if runs else [])
        + [f"--profile {profile}"]
    )


def _provenance_lines(rows: list[dict[str, Any]], command: str) -> list[str]:
    seeds = sorted({r["n_seeds"] for r in rows})
    lines = [
        "",
        f"- Runs: {sum(r['n_seeds'] for r in rows)} ({', '.join(map(str, seeds))} seed(s) per cell); "
        f"wall time {sum(r['wall_time_s'] for r in rows) / 3600:.2f} h in total.",
    ]
    # The profile's own cells (not the other-settings rows) that have fewer seeds than the most-run ones.
    own = [r for r in rows if not r.get("recipe")]
    most = max((r["n_seeds"] for r in own), default=0)
    fewer = [f"{_cell_name(r)} ({r['n_seeds']})" for r in own if r["n_seeds"] < most]
    if fewer:
        lines.append(f"- Cells with fewer than {most} seeds: {', '.join(fewer)}.")
    return [
        *lines,
        f"- Commits: {', '.join(sorted({c for r in rows for c in r['commits'].split()}))}.",
        f"- Devices: {'; '.join(sorted({d for r in rows for d in r['devices'].split('; ')}))}.",
        f"- Made by `{command}` from the run records.",
    ]


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


def _single(values):
    values = sorted(set(values))
    return values[0] if len(values) == 1 else " ".join(map(str, values))
