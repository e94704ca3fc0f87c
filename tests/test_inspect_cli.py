"""`sdbuild diff` compares builds; `sdbuild cache` lists and prunes the stage cache."""

from __future__ import annotations

import shutil

from sdbuild.cache import BuildCache
from sdbuild.cli import main


def test_diff_of_a_build_with_itself_shows_no_difference(tiny_build, capsys):
    assert main(["diff", str(tiny_build), str(tiny_build)]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "sha256" in out and "differs" not in out


def test_diff_names_what_differs(tiny_build, shared_cache_dir, tmp_path, capsys):
    assert main([f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}", "target.compute_units=CPU_ONLY"]) == 0
    (other,) = [p for p in (tmp_path / "tiny").iterdir() if not p.name.startswith(".")]
    capsys.readouterr()
    assert main(["diff", str(tiny_build), str(other)]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if line.rstrip().endswith("differs")]
    fields = {line.split()[0] for line in rows}
    assert fields == {"build_id", "compute_units"}, rows


def test_cache_list_and_prune(shared_cache_dir, tiny_build, tmp_path, capsys):
    copy = tmp_path / "cache"
    shutil.copytree(shared_cache_dir, copy)
    entries = BuildCache(copy).entries()
    assert main(["cache", "list", "--dir", str(copy)]) == 0
    listing = capsys.readouterr().out
    assert "convert" in listing and "verify" in listing
    assert main(["cache", "prune", "--dir", str(copy), "--max-gb", "0"]) == 0
    assert str(len(entries)) in capsys.readouterr().out
    assert BuildCache(copy).entries() == []


def test_cache_prune_needs_a_budget(tmp_path, capsys):
    assert main(["cache", "prune", "--dir", str(tmp_path)]) == 2
    assert "--older-than-days" in capsys.readouterr().err
