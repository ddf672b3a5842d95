"""Table 1 (distorted MNIST, with the 60x60 TC set) in Markdown: one table per profile and budget reading."""

from __future__ import annotations

from typing import Any

from stn_analysis.tables.markdown import (
    SET_LABELS,
    TEST_SET_CHANGED_MARK,
    _budget_banner,
    _cell_name,
    _cell_text,
    _collapse_lines,
    _ours_text,
    _provenance_lines,
    _reaching_lines,
    _recipe_lines,
    _runs_of,
    _test_set_lines,
    table_command,
)
from stn_repro.data.distortions import VARIANT_SETS
from stn_repro.paper import (
    TABLE1_ERROR,
    TABLE1_SETS,
    model_label,
    paper_error,
)

# The study sets (stn_repro.data.distortions.VARIANT_SETS): what each changes in the paper set it varies.
VARIANT_LABELS = {
    "p_4px": "P with N(0, 4 px) corner offsets instead of the spec's 5 px",
    "p_diagonal": "P with one N(0, 5 px) stretch per corner along its diagonal instead of N(0, 5 px) in x and y",
    "p_digit_frame": "P with the N(0, 5 px) corner offsets in the digit's pixels, not divided by the scale",
}


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
        ", which also gives the TC cells' localisation nets a lower lr",
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
