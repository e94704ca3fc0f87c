"""Build ids and cache keys follow sdbuild's own code, not just its version number."""

from __future__ import annotations

import shutil
from pathlib import Path

import sdbuild
from sdbuild.versions import sdbuild_source_digest, tool_versions


def test_an_edit_to_sdbuild_changes_the_source_digest(tmp_path, monkeypatch):
    copy = tmp_path / "sdbuild"
    shutil.copytree(Path(sdbuild.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sdbuild, "__file__", str(copy / "__init__.py"))
    unchanged = sdbuild_source_digest()
    assert unchanged == tool_versions()["sdbuild_source"], "a copy of the same code has the same digest"
    stage = copy / "stages" / "convert.py"
    stage.write_text(stage.read_text() + "\n# an edit\n")
    assert sdbuild_source_digest() != unchanged
