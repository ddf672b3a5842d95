"""Where the tests marked ``real_data`` find the real MNIST files: ``$STN_MNIST_SOURCE`` (the folder
``make data-mnist`` imports from), the fetched copy in the data folder (``$STN_DATA`` or ``data/``, after
``make data-mnist``), or ``../shared/data/mnist`` beside the checkout. Where none holds the four files, those
tests skip and say where they looked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stn_repro.data import MNIST_MD5
from stn_repro.data.files import default_data_dir

ROOT = Path(__file__).resolve().parents[1]
# Read once at import: some test modules remove STN_MNIST_SOURCE for their own tests.
SOURCE_ENV = os.environ.get("STN_MNIST_SOURCE")


def mnist_candidates() -> list[Path]:
    candidates = [Path(SOURCE_ENV)] if SOURCE_ENV else []
    return [*candidates, default_data_dir() / "mnist", ROOT.parent / "shared" / "data" / "mnist"]


def holds_mnist(folder: Path) -> bool:
    """The four MNIST files, gzipped or raw."""
    return all((folder / f"{n}.gz").is_file() or (folder / n).is_file() for n in MNIST_MD5)


def find_real_mnist() -> Path | None:
    return next((folder for folder in mnist_candidates() if holds_mnist(folder)), None)


@pytest.fixture
def real_mnist() -> Path:
    """A folder holding the real MNIST files (gzipped or raw), or the test skips naming where it looked."""
    found = find_real_mnist()
    if found is None:
        pytest.skip(f"real MNIST not found in {', '.join(map(str, mnist_candidates()))}")
    return found
