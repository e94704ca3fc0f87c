"""The built wheel, installed outside the repo, builds `tiny` from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a source distribution holds: the package (sdbuild/conf links to conf/, whose recipe group
# links to recipes/) and its metadata. Copied so that building leaves nothing in the clone.
SOURCES = ("pyproject.toml", "README.md", "conf", "recipes", "sdbuild")


def _run(args, cwd, env=None):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_installed_outside_the_repo_builds_tiny(tmp_path, shared_cache_dir, tiny_build):
    source = tmp_path / "source"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
          "--wheel-dir", str(tmp_path / "dist"), str(source)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("sdbuild-*.whl")

    # A fresh venv that sees this one's dependencies through a .pth line (its editable sdbuild is
    # not activated that way: .pth files are read only in site directories).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--quiet", str(wheel)],
         cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SDBUILD_RECIPES")}
    where = _run([str(python), "-c", "import sdbuild; print(sdbuild.__file__)"], cwd=elsewhere, env=env).stdout
    assert Path(where.strip()).is_relative_to(site), "the installed copy, not the clone, is imported"
    assert not (site / "sdbuild" / "conf").is_symlink() and (site / "sdbuild" / "conf" / "recipe" / "tiny.yaml").is_file()
    assert (site / "sdbuild" / "conf" / "quantization" / "mixed_bit_recipes" / "tiny-sd21-base_4.00.json").is_file()

    _run([str(venv / "bin" / "sdbuild"), "recipe=tiny", f"cache.dir={shared_cache_dir}", "--quiet"], cwd=elsewhere, env=env)
    (build,) = (elsewhere / "outputs" / "tiny").iterdir()
    assert _run([str(venv / "bin" / "sdbuild"), "verify", str(build)], cwd=elsewhere, env=env).stdout.endswith(
        "ok, every file matches the manifest\n")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["outputs"], "nothing else is written where it runs"
    # Same code, same recipe: the installed package builds what the clone builds (and, through
    # the shared cache that tiny_build filled, converts nothing again).
    assert (build / "manifest.json").read_bytes() == (tiny_build / "manifest.json").read_bytes()
