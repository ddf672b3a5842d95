"""The README is a front door that stays true: its example runs, its status block is what the committed
tables say, and every time or iteration count it (or the Makefile) states comes from a committed file."""

import functools
import re
from pathlib import Path

import yaml

from stn_analysis.tables.glance import STATUS_BEGIN, STATUS_END, status_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert "tps        32 params -> (8, 1, 28, 28)" in printed
    assert "identity at initialisation: True (8, 6)" in printed


def test_the_status_block_is_what_the_committed_tables_say():
    text = README.read_text()
    block = STATUS_BEGIN + text.split(STATUS_BEGIN, 1)[1].split(STATUS_END, 1)[0] + STATUS_END + "\n"
    assert block == status_markdown(ROOT / "results"), (
        "stale status block: run `make tables` (stn-table --status)"
    )


def committed_text() -> str:
    """Where a stated time may come from: the committed tables and analyses, and the committed benches."""
    files = [*(ROOT / "results").glob("*.md"), *(ROOT / "results" / "bench").glob("*.txt")]
    return "\n".join(path.read_text() for path in files)


def profile_iterations() -> set[int]:
    counts = set()
    for path in (ROOT / "configs" / "profile").rglob("*.yaml"):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
        for value in (trainer.get("iterations"), (trainer.get("embedding") or {}).get("iterations")):
            if value:
                counts.add(int(value))
    return counts


def test_every_stated_time_and_iteration_count_comes_from_a_committed_file():
    committed, iterations = committed_text(), profile_iterations()
    for path in (README, ROOT / "Makefile"):
        text = path.read_text()
        for number, unit in re.findall(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?) (h|min|s)\b", text):
            assert re.search(rf"(?<![\d.]){re.escape(number)} ?{unit}\b", committed), (
                f"{path.name} states {number} {unit}, which no committed table or bench file holds"
            )
        for number in re.findall(r"(\d[\d,]*) iterations", text):
            assert int(number.replace(",", "")) in iterations, (
                f"{path.name} states {number} iterations, which no profile trains (configs/profile/)"
            )


def test_the_readme_is_a_front_door_and_results_index_rows_are_short():
    assert len(README.read_text().splitlines()) <= 250
    rows = [
        line for line in (ROOT / "results" / "README.md").read_text().splitlines() if line.startswith("|")
    ]
    assert rows and max(len(row) for row in rows) <= 300


def record_errors() -> set[str]:
    """Every test and validation error the committed records hold (final and in their histories), as %.2f."""
    import json

    found = set()
    for path in (ROOT / "results" / "records").rglob("record.json"):
        record = json.loads(path.read_text())
        for entry in [record, *(record.get("history") or [])]:
            for key in ("test_error", "val_error"):
                if isinstance(entry.get(key), int | float):
                    found.add(f"{entry[key]:.2f}")
    return found


def test_the_docs_percentages_come_from_the_committed_tables_or_records():
    # The findings moved from the README to docs/: a number copied wrong, or left behind when a table
    # changed, should fail here rather than mislead a reader.
    tables = "\n".join(
        p.read_text() for p in [*(ROOT / "results").glob("*.md"), *(ROOT / "results").glob("*.csv")]
    )
    errors = record_errors()
    for page in sorted((ROOT / "docs").glob("*.md")):
        for number in re.findall(r"(?<![\d.])(\d+\.\d\d)%", page.read_text()):
            found = re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", tables) or number in errors
            assert found, f"docs/{page.name} quotes {number}%, which no committed table or record holds"


def test_a_stand_in_status_row_names_each_size_of_a_table_with_two():
    from stn_analysis.tables.glance import _status_row

    header = "experiment,profile,data,model,label,error_mean,paper_error,n_seeds\n"
    two = (
        header
        + "svhn,quick,synthetic-svhn64,cnn,CNN,33.19,4.0,3\nsvhn,quick,synthetic-svhn128,cnn,CNN,35.84,5.6,2\n"
    )
    row = _status_row("Table 2", "svhn_table2_quick_synthetic", two)
    assert "| 2 cells, 2/3 seed(s) | % error: 64 px: CNN 33.2; 128 px: CNN 35.8 (a stand-in" in row
    one = header + "cub,quick,synthetic-cub,cnn,CNN 224px,61.1,17.9,3\n"
    assert "% error: CNN 224px 61.1 (a stand-in" in _status_row("Table 3", "cub_table3_quick_synthetic", one)


@functools.cache
def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_in_the_docs_reaches_its_file_and_heading():
    pages = [README, *(ROOT / "docs").glob("*.md"), *(ROOT / "results").glob("*.md")]
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^()\s#]*)(?:#([^()\s]+))?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in heading_anchors(path)):
                link = f"{target}#{anchor}" if anchor else target
                broken.append(f"{page.relative_to(ROOT)}: ({link})")
    assert not broken, "links to no file or heading:\n" + "\n".join(broken)
