"""Where the analysis finds the project: its checkout, configs, committed results and run folders.

The analysis tools run from any folder. What they read by default is found from this package's own place
in the checkout (``pip install -e .``, as ``make install`` does), not from the current folder; paths given on
their command lines are taken as given (relative to the current folder).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout that holds this package (and ``configs/``, ``results/``, ``runs/``)."""
CONFIGS = PROJECT_ROOT / "configs"
RESULTS = PROJECT_ROOT / "results"
RECORDS = RESULTS / "records"
"""Committed run records: ``results/records/<experiment>_<profile>[_<variant>]/<cell>/seed<k>/record.json``."""
RUNS_ENV = "STN_RUNS"


def runs_dir() -> Path:
    """Where the runners write their run folders: ``$STN_RUNS``, else ``<project>/runs`` (configs/paths)."""
    env = os.environ.get(RUNS_ENV)
    return Path(env) if env else PROJECT_ROOT / "runs"


def check_checkout() -> None:
    """Raise ``FileNotFoundError`` with the fix when the package runs outside a checkout (no ``configs/``)."""
    if not CONFIGS.is_dir():
        raise FileNotFoundError(
            f"{CONFIGS} does not exist: the analysis reads the suite's configs from its checkout; install it "
            "from a clone with `make install` (an editable install)"
        )
