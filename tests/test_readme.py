"""The README's example runs exactly as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert "tps        32 params -> (8, 1, 28, 28)" in printed
    assert "identity at initialisation: True (8, 6)" in printed


# The status table's rows and the results/ tables their numbers must come from.
STATUS_ROW_TABLES = {
    "Table 1": "mnist_table1_*.md",
    "Table 4": "addition_table4_*.md",
    "Table 5": "coloc_table5_*.md",
}


def test_the_status_tables_percentages_are_in_the_results_tables():
    # The status table is written by hand: a number copied wrong, or left behind when a table changed,
    # should fail here rather than mislead a reader.
    status = README.read_text().split("## Where the reproduction stands")[1].split("\n## ")[0]
    results = README.parent / "results"
    rows = {line.split("|")[1].strip(): line for line in status.splitlines() if line.startswith("| Table")}
    for prefix, pattern in STATUS_ROW_TABLES.items():
        row = next(text for name, text in rows.items() if name.startswith(prefix))
        tables = " ".join(path.read_text() for path in sorted(results.glob(pattern)))
        quoted = re.findall(r"(\d+\.\d+)%", row)
        assert quoted, f"the {prefix} row quotes no percentage"
        missing = [n for n in quoted if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", tables)]
        assert not missing, f"README's {prefix} row quotes {missing}, which no results/{pattern} holds"
