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
