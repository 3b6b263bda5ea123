"""Every ```python block of the README runs as written (in a folder with a urls.txt)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "urls.txt").write_text(
        "".join(f"https://example.invalid/{i}\n" for i in range(200))
    )
    script = tmp_path / f"example_{index}.py"
    script.write_text(BLOCKS[index])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    capsys.readouterr()
