"""Which committed weights a committed result needs: the rule for ``model.pt`` (and a co-localisation run's
``transformer.pt``) in ``results/records/``.

Records (JSON, with their histories) are always committed; weights only where a committed result needs them:
a run folder that a result file in ``results/`` names (its "Made by" command or its text: a rescore, a
figure, an analysis reads the weights), a record scored again on a later test set (``rescored``: the table
shows that score, made from the weights), and the CNN a committed ST-CNN run started from
(``trainer.st_init=cnn``). ``tests/test_results_weights.py`` holds every committed weights file to it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def named_folders(results: Path) -> set[str]:
    """Every ``records/...`` folder a result file in ``results/`` names, as ``results/records/...``."""
    names = set()
    for path in Path(results).glob("*.md"):
        for match in re.findall(r"(?:results/)?(records/[\w./{},-]+)", path.read_text()):
            names.add("results/" + match.rstrip(".,/`)"))
    return names


def needed_by(folder: str, named: set[str], record: dict) -> str | None:
    """Why ``folder`` (``results/records/<...>/seed<k>``) keeps its weights, or ``None``."""
    if any(folder == name or folder.startswith(name + "/") for name in named):
        return "named by a result file"
    if record.get("rescored"):
        return "rescored on a later test set"
    return None


def weights_needs(root: Path, weight_files: list[str]) -> dict[str, str | None]:
    """For each weights file (relative to ``root``), why it is kept (``None``: nothing needs it)."""
    named = named_folders(root / "results")
    records = {}
    for path in (root / "results" / "records").rglob("record.json"):
        records[str(path.parent.relative_to(root))] = json.loads(path.read_text())
    # A CNN that committed ST-CNN runs of the same profile and seed started from (trainer.st_init=cnn).
    starts = set()
    for folder, record in records.items():
        if ((record.get("config") or {}).get("trainer") or {}).get("st_init") == "cnn":
            parent = Path(folder).parent.parent
            seed = Path(folder).name
            starts |= {
                str(p.parent.relative_to(root)) for p in Path(root, parent).glob(f"*-cnn/{seed}/record.json")
            }
    needs = {}
    for weights in weight_files:
        folder = str(Path(weights).parent)
        why = needed_by(folder, named, records.get(folder, {}))
        if why is None and folder in starts:
            why = "the CNN a committed ST-CNN run started from"
        needs[weights] = why
    return needs
