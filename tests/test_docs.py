"""The README's generated tables match the option registry and the bundled files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "tools" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(text: str, name: str) -> str:
    start = text.index(f"<!-- {name}:start -->") + len(f"<!-- {name}:start -->")
    return text[start : text.index(f"<!-- {name}:end -->")].strip()


def test_readme_option_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert _section(readme, "options-table") == _tables().options_table()


def test_readme_architecture_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert _section(readme, "architectures-table") == _tables().architectures_table()


def test_models_doc_head_table_is_current():
    text = (ROOT / "docs" / "models.md").read_text()
    assert _section(text, "heads-table") == _tables().heads_table()
