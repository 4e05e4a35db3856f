"""docs/testing.md's examples run as they are written (issue 13: the old example failed
against the shipped policy). Every ```python block whose first line is ``# test_<name>.py`` is
written to that file and run by pytest, from the repository's root as the page says, with
kumoq's pytest plugin (registered by installing kumoq) and kumoq's pytest settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "testing.md"
BLOCK = re.compile(r"^```python\n# (test_\w+\.py)\n(.*?)^```$", re.M | re.S)


def doc_tests() -> dict[str, str]:
    return {name: f"# {name}\n{body}" for name, body in BLOCK.findall(DOC.read_text())}


def test_the_page_has_the_examples_it_promises():
    assert set(doc_tests()) >= {
        "test_policy_harness.py", "test_relay_harness.py", "test_policy.py", "test_relay.py",
    }  # fmt: skip


def test_every_example_on_the_page_passes(tmp_path):
    files = []
    for name, text in doc_tests().items():
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), *files],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert f"{sum(t.count('def test_') for t in doc_tests().values())} passed" in run.stdout
