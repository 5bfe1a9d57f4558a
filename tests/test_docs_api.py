"""docs/api.md names every exported name, so the reference cannot silently fall behind the code."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
MODULES = [
    "peft_svf",
    "peft_svf.svf",
    "peft_svf.trainer",
    "peft_svf.tasks",
    "peft_svf.adaptive",
    "peft_svf.pipeline",
]


def documented(name: str, text: str) -> bool:
    """``name`` as code: `name`, `name(...)`, `name = ...` or as an entry in a list of names (`a`, `name`)."""
    return re.search(r"`" + re.escape(name) + r"[`(\s]", text) is not None


@pytest.mark.parametrize("module", MODULES)
def test_every_exported_name_is_in_the_api_reference(module):
    text = API_DOC.read_text()
    assert f"## `{module}`" in text
    missing = [name for name in importlib.import_module(module).__all__ if not documented(name, text)]
    assert not missing, f"docs/api.md lacks {module} names: {missing}"


def test_the_api_reference_names_only_real_modules():
    """Every ``## `peft_svf...` `` section is an importable module, so renamed packages show up here."""
    for module in re.findall(r"^## `(peft_svf[\w.]*)`", API_DOC.read_text(), flags=re.MULTILINE):
        importlib.import_module(module)
