"""Suite-wide guards: no test may reach the network, and Hugging Face libraries stay offline."""

import os
import socket

import pytest

# pytest-xdist runs one worker per core: one compute thread each avoids oversubscription, which
# slows tiny forward passes by orders of magnitude. Subprocess builds inherit the setting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a non-local connection fails the test loudly."""
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and sock.family != socket.AF_UNIX:
            raise RuntimeError(f"test tried to reach the network: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory):
    """One stage cache for the whole run, shared by xdist workers (its locks make that safe)."""
    return tmp_path_factory.getbasetemp().parent / "sdbuild-cache"


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, shared_cache_dir):
    """The default recipe, built once per worker through the public CLI."""
    from sdbuild.cli import main

    root = tmp_path_factory.mktemp("tiny")
    assert main([f"output.dir={root / 'outputs'}", f"cache.dir={shared_cache_dir}"]) == 0
    builds = [p for p in (root / "outputs" / "tiny").iterdir() if not p.name.startswith(".")]
    assert len(builds) == 1
    return builds[0]


@pytest.fixture(scope="session")
def tiny_ane_build(tmp_path_factory, shared_cache_dir):
    """tiny-ane: SPLIT_EINSUM, 6-bit palettes, UNet in two chunks, as sd2-ane at tiny size."""
    from sdbuild.cli import main

    root = tmp_path_factory.mktemp("tiny-ane")
    assert main(["recipe=tiny-ane", f"output.dir={root}", f"cache.dir={shared_cache_dir}"]) == 0
    (build,) = [p for p in (root / "tiny-ane").iterdir() if not p.name.startswith(".")]
    return build
