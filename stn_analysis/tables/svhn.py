"""Table 2 (SVHN multi-digit) in Markdown, and its synthetic twin (never mixed with real SVHN runs)."""

from __future__ import annotations

from typing import Any

from stn_analysis.tables.markdown import (
    TEST_SET_CHANGED_MARK,
    _budget,
    _cell_text,
    _collapse_lines,
    _provenance_lines,
    _runs_of,
    table_command,
)
from stn_repro.data.synthetic.svhn import SYNTHETIC_VERSION
from stn_repro.paper import (
    SVHN_MODEL_LABELS,
    TABLE2_ERROR,
    TABLE2_OTHERS,
)

SVHN_ROWS = ("cnn", "st_cnn_single", "st_cnn_multi")


def svhn_markdown(rows: list[dict[str, Any]], profile: str, synthetic: bool, runs: str | None = None) -> str:
    """Table 2 in the paper's layout: ours ± std over seeds (paper), % sequence error, at 64 and 128 px.
    Rows of other settings (precision, an older synthetic stand-in: see
    :func:`~stn_analysis.tables.aggregate.aggregate`) are listed below the table, not in it."""
    every = _runs_of(rows, "svhn", profile, "SVHN ", synthetic, recipe=None)
    apart = [r for r in every if r.get("recipe")]
    # The banners and provenance describe the table's own runs; where every run is set apart, those.
    rows = [r for r in every if not r.get("recipe")] or apart
    by_key = {(r["model"], r["size"]): r for r in rows if not r.get("recipe")}
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
    lines += _stand_in_lines(rows)
    lines += _apart_lines(apart)
    lines += _provenance_lines(rows, table_command("svhn", profile, runs))
    return "\n".join(lines) + "\n"


def _stand_in_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The note on cells scored on an older synthetic stand-in than this code draws (marked †)."""
    changed = [r for r in rows if r["synthetic"] and r["test_set_check"].startswith("differs")]
    if not changed:
        return []
    cells = ", ".join(f"{r['data']}-{r['model']} {r['test_set_check']}" for r in changed)
    return [
        "",
        f"{TEST_SET_CHANGED_MARK} Scored on an older version of the synthetic stand-in than `make "
        f"data-svhn-synthetic` builds now (version {SYNTHETIC_VERSION}; {cells}): another task (docs/data.md), "
        "not comparable with runs on today's stand-in; rerun on it to compare.",
    ]


def _apart_lines(apart: list[dict[str, Any]]) -> list[str]:
    """Rows of other settings than the table's (another precision, an older stand-in), listed."""
    if not apart:
        return []
    lines = ["", "Set apart, not in the table (other settings than its cells'):", ""]
    for r in apart:
        lines.append(
            f"- {r['data']} {r['label']} (`{r['recipe']}`): {_cell_text(r, None).removesuffix(' (-)')}"
        )
    return lines
