"""Run records -> table rows: the seeds of each cell of a profile aggregated (mean, spread, paper number,
time, images until the paper's error was reached), runs of another recipe set apart, and the rows as CSV.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import fields
from typing import Any

from stn_analysis.records import record_cell, stand_in_version
from stn_analysis.tables.cub import CUB_CONTROL_RECIPE, _cub_initialisation, is_cub_control
from stn_analysis.tables.svhn import SVHN_ROWS
from stn_repro.data.distortions import VARIANT_SETS
from stn_repro.paper import (
    CUB_ROWS,
    SVHN_MODEL_LABELS,
    TABLE1_ERROR,
    TABLE1_SETS,
    TABLE4_ROWS,
    addition_model_label,
    addition_paper_error,
    cub_model_label,
    model_label,
    paper_error,
)
from stn_repro.training.records import collapsed, run_commits
from stn_repro.training.settings import TrainSettings

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
EXPERIMENTS = ("mnist", "svhn", "addition", "cub")


def first_reaching(history: list[dict[str, Any]], target: float, key: str = "val_error") -> dict | None:
    """The first history entry whose ``key`` is at or below ``target`` (e.g. the paper's error), or ``None``."""
    for entry in history or []:
        if key in entry and entry[key] <= target:
            return entry
    return None


# Optimiser settings that only reach a localisation net.
LOCALISATION_OPTIM_KEYS = ("localisation_lr_multiplier",)


# Optimiser settings the runners read with a default where a config leaves them out (TrainSettings' own).
OPTIM_DEFAULTS = {
    key: field.default
    for field in fields(TrainSettings)
    for key in ("lr_schedule", "warmup_iterations", "nesterov")
    if field.name == key
}


# What a record says at its top level of its training's length, against the profile's ``trainer.<key>``.
TRAINER_LENGTH_KEYS = ("iterations", "batch_size")
# The precision a run trained in (trainer.autocast: none = float32, bf16): a record without it is float32.
PRECISION_KEY = "autocast"


def record_precision(record: dict[str, Any]) -> str:
    """The precision ``record`` trained in, as ``trainer.autocast`` names it: ``"none"`` (float32) or
    ``"bf16"``. A record of ``autocast=auto`` stores what it resolved to (``precision``); older ones
    predate the setting and trained in float32."""
    if record.get("precision"):
        return record["precision"]
    return ((record.get("config") or {}).get("trainer") or {}).get(PRECISION_KEY, "none")


def recipe_deviation(record: dict[str, Any], profile_settings: dict[str, Any] | None) -> str:
    """The settings in which ``record`` departs from its profile's own (``profile_settings``: the ``optim``
    the profile composes, plus ``trainer.iterations`` and ``trainer.batch_size``), as ``"key=value"`` pairs
    joined by ``", "``; ``""`` where it follows the profile or no ``profile_settings`` are given. A key the
    record lacks (written before the setting existed) counts as the profile's, or, where the runner reads it
    with a default (:data:`OPTIM_DEFAULTS`), as that default; a model without a transformer
    ignores the localisation net's settings. The precision is not part of the recipe (bfloat16 and float32
    seeds agree, docs/speed.md): :func:`aggregate` sets a cell's runs of a second precision apart."""
    if not profile_settings:
        return ""
    optim = (record.get("config") or {}).get("optim") or {}
    # A model without a transformer has no localisation net: its settings for one change nothing.
    unused = () if record.get("transform") else LOCALISATION_OPTIM_KEYS
    # A key the record lacks but the runner reads with a default (TrainSettings' own: the step schedule, no
    # Nesterov, no warm-up) trained with that default, whatever the profile says today.
    optim = {**{k: v for k, v in OPTIM_DEFAULTS.items() if k in profile_settings}, **optim}
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
    them apart, never averaged with the profile's runs.

    Precision likewise: a cell's runs are never averaged across precisions. The cell's row holds the runs of
    the precision it has most seeds of (float32 on a tie: the reference); the runs of the other precision
    form a row of their own, whose ``recipe`` names it (``trainer.autocast=bf16``).

    And the synthetic SVHN stand-in's version (:func:`stand_in_version`): the cell's row holds the runs of
    the newest version among the experiment's runs; runs of an older one form a row whose ``recipe`` names
    it (``stand-in v1``): another task, never averaged with today's."""
    profile_optims = profile_optims or {}
    by_precision: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        experiment = record.get("experiment", "mnist")  # records made before the field are MNIST's
        reading = record.get("budget_reading", "about_400k") if experiment == "mnist" else ""
        expected = profile_optims.get((experiment, record["profile"], record_cell(record)))
        recipe = recipe_deviation(record, expected)
        if experiment == "cub" and is_cub_control(record):
            recipe = ", ".join(filter(None, (recipe, CUB_CONTROL_RECIPE)))
        key = (experiment, record["profile"], reading, record["data"], record["model"], record["transform"])
        kind = (record_precision(record), stand_in_version(record))
        by_precision[(*key, recipe)][kind].append(record)
    # The newest stand-in version among an experiment's runs: runs of an older one are another task, named
    # so in every recipe (a cell with only older runs is not a cell of today's table).
    newest_of: dict[str, int] = defaultdict(int)
    for (experiment, *_), kinds in by_precision.items():
        newest_of[experiment] = max(newest_of[experiment], *(version or 0 for _, version in kinds))

    def is_older(version: int | None, newest: int) -> bool:  # None: real data, of no stand-in version
        return version is not None and version < newest

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for (*key, recipe), kinds in by_precision.items():
        newest = newest_of[key[0]]
        precisions = {p for p, v in kinds if not is_older(v, newest)} or {p for p, _ in kinds}
        main = max(
            precisions, key=lambda p: (sum(len(r) for (q, _), r in kinds.items() if q == p), p == "none")
        )
        for (precision, version), runs in kinds.items():
            other = "" if precision == main else f"trainer.{PRECISION_KEY}={precision}"
            older = f"stand-in v{version}" if is_older(version, newest) else ""
            groups[(*key, ", ".join(filter(None, (recipe, other, older))))] = runs
    rows = []
    for (experiment, profile, reading, data, model, transform, recipe), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        errors = [r["test_error"] for r in runs]
        mean = statistics.fmean(errors)
        if experiment == "mnist":
            paper, label = paper_error(data, model, transform), model_label(model, transform)
        elif experiment == "addition":
            paper, label = addition_paper_error(model, transform), addition_model_label(model, transform)
        elif experiment == "cub" and CUB_CONTROL_RECIPE in recipe:  # a row the paper does not have
            paper, label = None, f"{cub_model_label(model, runs[0]['size'])} (control)"
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
                "precision": record_precision(runs[0]),
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


def _single(values):
    values = sorted(set(values))
    return values[0] if len(values) == 1 else " ".join(map(str, values))
