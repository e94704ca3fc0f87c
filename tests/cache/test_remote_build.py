"""Two machines share stage results through a remote cache (moto's S3 server): the second one
converts nothing and writes the same bytes; a damaged remote object is reported and rebuilt."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import fsspec

from sdbuild.cli import main

ROOT = Path(__file__).resolve().parents[2]
# Two small components keep the test quick; the bench runs whole recipes.
RECIPE = ["components=[text_encoder,vae_encoder]"]
CONVERSION = re.compile(r"^\[\d+/\d+\] (\S+)\s+convert\s+\.\.\.", re.MULTILINE)


def build_args(machine: Path, remote: tuple[str, dict]) -> list[str]:
    url, options = remote
    return [*RECIPE, f"output.dir={machine / 'out'}", f"cache.dir={machine / 'cache'}", f"cache.remote={url}",
            *(f"+cache.remote_options.{name}={value}" for name, value in options.items())]


def build_on(machine: Path, remote: tuple[str, dict], capsys) -> tuple[Path, str]:
    """Build on a 'machine' (its own output and cache folders); the build folder and stderr."""
    assert main(build_args(machine, remote)) == 0
    (build,) = [p for p in (machine / "out").glob("*/*") if not p.name.startswith(".")]
    return build, capsys.readouterr().err


def files(build: Path) -> dict[str, bytes]:
    # build-info.json records when, where and how long: the one file that differs between hosts.
    return {p.relative_to(build).as_posix(): p.read_bytes() for p in sorted(build.rglob("*"))
            if p.is_file() and p.name != "build-info.json"}


def published_archive(fs, root: str, *, stage: str, component: str) -> str:
    """The archive the remote's index names for one stage of one component."""
    for index_path in fs.find(f"{root}/index"):
        index = json.loads(fs.cat_file(index_path))
        if index["record"]["stage"] == stage and index["record"]["meta"].get("component") == component:
            return f"{root}/{index['archive']}"
    raise AssertionError(f"no {stage} entry of {component} in the remote cache")


def test_second_machine_converts_nothing_and_a_damaged_object_is_rebuilt(tmp_path, s3_remote, fake_aws, remote_objects, capsys):
    build_a, log_a = build_on(tmp_path / "a", s3_remote, capsys)
    assert sorted(CONVERSION.findall(log_a)) == ["text_encoder", "vae_encoder"]

    build_b, log_b = build_on(tmp_path / "b", s3_remote, capsys)
    assert CONVERSION.findall(log_b) == [] and "warning" not in log_b
    assert files(build_b) == files(build_a)

    # Damage the vae_encoder conversion's archive: machine C reports it, converts that one again,
    # and the remote ends with a sound entry that machine D uses.
    url, options = s3_remote
    fs, root = fsspec.core.url_to_fs(url, **options)
    archive = published_archive(fs, root, stage="convert", component="vae_encoder")
    data = bytearray(fs.cat_file(archive))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(archive, bytes(data))
    build_c, log_c = build_on(tmp_path / "c", s3_remote, capsys)
    warnings = [line for line in log_c.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "corrupt" in warnings[0], log_c
    assert CONVERSION.findall(log_c) == ["vae_encoder"]
    assert files(build_c) == files(build_a)
    build_d, log_d = build_on(tmp_path / "d", s3_remote, capsys)
    assert CONVERSION.findall(log_d) == [] and "warning" not in log_d

    # No credential in anything the builds wrote: folders, remote objects, progress output.
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    written += [*remote_objects(s3_remote).values(), (log_a + log_b + log_c + log_d).encode()]
    assert len(written) > 50
    for secret in fake_aws.values():
        assert not any(secret.encode() in blob for blob in written), f"{secret} was written"


def test_two_machines_building_one_recipe_at_once_both_succeed(tmp_path, s3_remote, capsys):
    url, options = s3_remote
    env = {**os.environ, "AWS_ENDPOINT_URL": options["endpoint_url"]}  # the endpoint botocore reads itself
    recipe = ["components=[vae_encoder]", "verify=false", f"cache.remote={url}"]
    builders = [
        subprocess.Popen([sys.executable, "-m", "sdbuild", *recipe, f"output.dir={tmp_path / name / 'out'}",
                          f"cache.dir={tmp_path / name / 'cache'}"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for builder in builders:
        _, err = builder.communicate(timeout=600)
        assert builder.returncode == 0, err[-3000:]
        assert "warning" not in err
    builds = [next(p for p in (tmp_path / name / "out").glob("*/*")) for name in ("a", "b")]
    assert files(builds[0]) == files(builds[1])
    # The remote holds a sound entry per stage: a third machine converts nothing.
    assert main([*recipe, f"+cache.remote_options.endpoint_url={options['endpoint_url']}",
                 f"output.dir={tmp_path / 'c' / 'out'}", f"cache.dir={tmp_path / 'c' / 'cache'}"]) == 0
    log_c = capsys.readouterr().err
    assert CONVERSION.findall(log_c) == [] and "convert   cached" in log_c and "warning" not in log_c
