"""Table 2 (SVHN multi-digit) in Markdown, and its synthetic twin (never mixed with real SVHN runs)."""

from __future__ import annotations

from typing import Any

from stn_analysis.tables.markdown import (
    _budget,
    _cell_text,
    _collapse_lines,
    _provenance_lines,
    _runs_of,
    table_command,
)
from stn_repro.paper import (
    SVHN_MODEL_LABELS,
    TABLE2_ERROR,
    TABLE2_OTHERS,
)

SVHN_ROWS = ("cnn", "st_cnn_single", "st_cnn_multi")


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
