"""What every paper table's Markdown shares: a cell against the paper, the marks and their notes, the budget
banner of a reduced run, the runs set apart, the images until the paper's error was reached, provenance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stn_repro.data.distortions import VARIANT_SETS
from stn_repro.paper import (
    paper_error,
)

# Table 1's data sets as the paper names them (the cells of other tables name themselves).
SET_LABELS = {"r": "R", "rts": "RTS", "p": "P", "e": "E", "tc": "TC 60x60"}

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
    # ST-CNN Multi has four transformers: one of them fixed leaves the others free to move.
    several = any(r.get("model") == "st_cnn_multi" for r in hit)
    ending = (
        "; in ST-CNN Multi that is one of its four transformers, the others may still move."
        if several
        else " and the number is not a spatial transformer's."
    )
    return [
        "",
        f"{COLLAPSED_MARK} A run of the cell ({cells}) ended with a localisation net that predicts the same "
        "transform for every test image (`localisation_spread` 0 in its record: dead hidden units), so its "
        f"transformer is a fixed warp{ending}",
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
    paper's budget, ``optim_note`` what the profile's file sets beyond the optimiser. Empty for the paper's."""
    if profile == "fast":
        return [
            f"> **FAST PROFILE, NOT THE PAPER'S PROTOCOL** — the paper's data, models and budgets trained with "
            f"another optimisation (configs/profile/mnist/fast.yaml{optim_note}) for {_budget(rows)} per run, "
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
    # A cell trained in bfloat16 (and no other precision) says so here; a second precision has its own row.
    bf16 = [_cell_name(r) for r in own if r.get("precision") == "bf16"]
    if bf16:
        lines.append(f"- Trained in bfloat16 (`trainer.autocast`; float32 elsewhere): {', '.join(bf16)}.")
    return [
        *lines,
        f"- Commits: {', '.join(sorted({c for r in rows for c in r['commits'].split()}))}.",
        f"- Devices: {'; '.join(sorted({d for r in rows for d in r['devices'].split('; ')}))}.",
        f"- Made by `{command}` from the run records.",
    ]
