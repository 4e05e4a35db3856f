"""docs/architecture.md names every module of the tree, so a newcomer finds the room for any
line from the table."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_is_in_the_architecture_table() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "kumoq").rglob("*.py"))
        if path.name != "__init__.py" and f"`{path.name}`" not in doc
    ]
    assert missing == []
