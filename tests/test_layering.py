"""The layering contract, beyond what import-linter checks (`make lint` runs its contracts: the library never
imports the analysis or the runners, the library's layers, no task imports another).

Here: no module imports a private name (``_name``) from another package. A name that another package needs
is part of its owner's interface and gets a public name there.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stn_repro", "stn_analysis", "experiments")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def private_imports_across_packages(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            me = module_name(path, root)
            my_package = package_of(me, path.name == "__init__.py")
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom) or node.level:
                    continue  # a relative import stays inside its own package
                source = node.module or ""
                source_is_package = (root / Path(*source.split("."))).is_dir()
                if package_of(source, source_is_package) == my_package:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {source}.{alias.name}")
    return found


def test_no_module_imports_a_private_name_from_another_package():
    assert private_imports_across_packages() == []


def test_the_check_finds_a_private_import_across_packages(tmp_path):
    # The check itself must be able to fail: the analysis importing a private name of the library (while a
    # module of the library's own package may).
    (tmp_path / "stn_analysis").mkdir()
    (tmp_path / "stn_repro" / "data").mkdir(parents=True)
    (tmp_path / "stn_analysis" / "leak.py").write_text("from stn_repro.data.sets import _FIX\n")
    (tmp_path / "stn_repro" / "data" / "sets.py").write_text("_FIX = 1\n")
    (tmp_path / "stn_repro" / "data" / "mnist.py").write_text("from stn_repro.data.sets import _FIX\n")
    assert private_imports_across_packages(tmp_path) == ["stn_analysis/leak.py:1: stn_repro.data.sets._FIX"]


def test_the_analysis_commands_run_from_outside_the_checkout(tmp_path):
    # Installed with the library (pyproject's [project.scripts]), they find the configs from their own place.
    import subprocess
    import sys

    committed = ROOT / "results" / "records" / "mnist_fast"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stn_analysis.bookkeeping.missing",
            "--profile",
            "fast",
            "--records",
            str(committed),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "0 run(s) without a finished record" in result.stdout
