"""The remote tier of BuildCache against a real S3 API (moto's server) and a file:// store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import pytest

from sdbuild.cache import BuildCache
from sdbuild.cache.remote import RemoteStore
from sdbuild.errors import SdbuildError

KEY = BuildCache.key("convert", {"component": "unet"})


def write_result(folder: Path) -> dict:
    (folder / "model.mlpackage").mkdir()
    (folder / "model.mlpackage" / "weight.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "report.json").write_text('{"psnr": 61.2}')
    return {"component": "unet"}


def forbidden(folder: Path) -> dict:
    raise AssertionError("the entry should have come from the remote cache")


def machine(tmp_path: Path, name: str, remote: tuple[str, dict]) -> BuildCache:
    url, options = remote
    return BuildCache(tmp_path / name, remote=RemoteStore(url, options))


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_second_machine_downloads_instead_of_building(tmp_path, remote, remote_objects):
    built, hit = machine(tmp_path, "a", remote).get_or_create(KEY, write_result)
    assert not hit
    fetched, hit = machine(tmp_path, "b", remote).get_or_create(KEY, forbidden)
    assert hit and tree(fetched) == tree(built)
    assert fetched.is_relative_to(tmp_path / "b")  # now in machine B's local tier
    index = json.loads(remote_objects(remote)[f"/index/{KEY}.json"])
    assert index["record"]["meta"] == {"component": "unet"}


def test_local_hit_does_not_touch_the_remote(tmp_path, remote):
    local = machine(tmp_path, "a", remote)
    local.get_or_create(KEY, write_result)
    url, options = remote
    fs, root = fsspec.core.url_to_fs(url, **options)
    fs.rm(root, recursive=True)
    assert local.get_or_create(KEY, forbidden)[1]


def corrupt_archive(fs, path):
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(data))


def truncate_archive(fs, path):
    fs.pipe_file(path, fs.cat_file(path)[:1000])


def delete_archive(fs, path):
    fs.rm_file(path)


@pytest.mark.parametrize("damage", [corrupt_archive, truncate_archive, delete_archive])
def test_damaged_remote_entry_is_reported_rebuilt_and_replaced(tmp_path, remote, damage, capsys):
    machine(tmp_path, "a", remote).get_or_create(KEY, write_result)
    url, options = remote
    fs, root = fsspec.core.url_to_fs(url, **options)
    (archive,) = fs.find(f"{root}/archives")
    damage(fs, archive)

    calls = []
    rebuilt, hit = machine(tmp_path, "b", remote).get_or_create(KEY, lambda d: calls.append(1) or write_result(d))
    assert not hit and calls == [1]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and KEY in warnings[0] and "corrupt" in warnings[0], warnings
    # The remote now holds one sound entry (the damaged archive is gone) that a third machine uses.
    assert fs.find(f"{root}/archives") != [archive] and len(fs.find(f"{root}/archives")) == 1
    fetched, hit = machine(tmp_path, "c", remote).get_or_create(KEY, forbidden)
    assert hit and tree(fetched) == tree(rebuilt)


def test_unreadable_index_is_reported_and_rebuilt(tmp_path, remote, capsys):
    machine(tmp_path, "a", remote).get_or_create(KEY, write_result)
    url, options = remote
    fs, root = fsspec.core.url_to_fs(url, **options)
    fs.pipe_file(f"{root}/index/{KEY}.json", b'{"key": "trunc')
    assert not machine(tmp_path, "b", remote).get_or_create(KEY, write_result)[1]
    assert "its index is not JSON" in capsys.readouterr().err
    assert machine(tmp_path, "c", remote).get_or_create(KEY, forbidden)[1]


def test_unusable_remote_fails_before_any_work_in_one_line(tmp_path, s3_remote, monkeypatch):
    url, options = s3_remote
    with pytest.raises(SdbuildError, match="remote cache s3://nope-bucket/c is unusable: bucket nope-bucket not found"):
        RemoteStore("s3://nope-bucket/c", options)
    unreachable = {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(SdbuildError, match="is unusable: EndpointConnectionError: Could not connect to the endpoint URL") as error:
        RemoteStore(url, unreachable)
    assert "\n" not in str(error.value)
    from s3fs import S3FileSystem

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    S3FileSystem.clear_instance_cache()
    with pytest.raises(SdbuildError, match="is unusable: NoCredentialsError: Unable to locate credentials"):
        RemoteStore(url, options)


def test_endpoint_from_aws_endpoint_url(tmp_path, s3_remote, remote_objects, monkeypatch):
    url, options = s3_remote
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    machine(tmp_path, "a", (url, {})).get_or_create(KEY, write_result)
    assert f"/index/{KEY}.json" in remote_objects(s3_remote)


def test_remote_that_fails_mid_build_leaves_the_local_build_whole(tmp_path, file_remote, capsys):
    cache = machine(tmp_path, "a", file_remote)
    # A file where the archives folder belongs: every upload fails (permissions would not stop root).
    (Path(file_remote[0].removeprefix("file://")) / "archives").write_text("not a folder")
    entry, hit = cache.get_or_create(KEY, write_result)
    assert not hit and (entry / "report.json").exists()
    assert "cannot write the remote cache" in capsys.readouterr().err


CONCURRENT_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sdbuild.cache import BuildCache
    from sdbuild.cache.remote import RemoteStore

    local, url, endpoint, rendezvous, me, key = sys.argv[1:]
    cache = BuildCache(Path(local), remote=RemoteStore(url, {"endpoint_url": endpoint} if endpoint else {}))

    def create(folder):
        (Path(rendezvous) / me).touch()
        deadline = time.time() + 120
        while len(list(Path(rendezvous).iterdir())) < 2:  # both machines are building the key
            assert time.time() < deadline, "the other builder never started"
            time.sleep(0.05)
        (folder / "weight.bin").write_bytes(b"w" * 100_000)
        return {"component": "unet"}

    entry, hit = cache.get_or_create(key, create)
    print("hit" if hit else "built", (entry / "weight.bin").stat().st_size)
""")


def test_two_machines_building_one_key_at_once_both_succeed(tmp_path, remote):
    url, options = remote
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    builders = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILDER, str(tmp_path / name), url,
                          options.get("endpoint_url", ""), str(rendezvous), name, KEY],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    results = [b.communicate(timeout=300) for b in builders]
    for builder, (out, err) in zip(builders, results):
        assert builder.returncode == 0, err[-3000:]
        assert out.split() == ["built", "100000"]
        assert "warning" not in err
    fetched, hit = machine(tmp_path, "c", remote).get_or_create(KEY, forbidden)
    assert hit and (fetched / "weight.bin").read_bytes() == b"w" * 100_000


def test_remote_is_placement_and_refuses_credentials_in_config(tmp_path, fake_aws, capsys):
    from sdbuild.cli import compose_recipe, main
    from sdbuild.spec import validate

    shared = validate(compose_recipe(["cache.remote=s3://bucket/cache",
                                      "+cache.remote_options.endpoint_url=http://127.0.0.1:9"]))
    assert shared.build_id == validate(compose_recipe([])).build_id
    secret = fake_aws["AWS_SECRET_ACCESS_KEY"]
    for overrides in (["cache.remote=s3://bucket/cache", f"+cache.remote_options.secret={secret}"],
                      ["cache.remote=s3://bucket/cache", f"+cache.remote_options.client_kwargs.aws_secret_access_key={secret}"],
                      [f"cache.remote=s3://AKIA:{secret}@bucket/cache"]):
        assert main([*overrides, f"output.dir={tmp_path / 'out'}", f"cache.dir={tmp_path / 'cache'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and secret not in err, err
        assert "credential" in err
    assert not (tmp_path / "out").exists()
