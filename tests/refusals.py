"""A build refused before any work: one `error:` line, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

from sdbuild.cli import main


def refused_build(overrides: list[str], tmp_path: Path, capsys) -> str:
    """The error line of ``sdbuild <overrides>`` (output and cache under ``tmp_path``)."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main([*overrides, f"output.dir={out}", f"cache.dir={cache}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not out.exists() and not cache.exists(), "nothing written"
    return err
