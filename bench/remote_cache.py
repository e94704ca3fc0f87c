"""Two machines, one remote cache: machine A sweeps a recipe and fills an S3 store; machine B,
with an empty local cache and the same store, rebuilds the sweep converting nothing.

    .venv/bin/python bench/remote_cache.py [--recipe tiny] [--presets none kmeans4 kmeans6 linear8]

The S3 store is moto's server on 127.0.0.1 (an S3 API over HTTP, as in the tests); each machine
is its own `python -m sdbuild -m ...` process with its own cache folder. Prints wall time,
conversions and compressions of each machine, the bytes in the store, and checks that B's builds
match A's file by file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.build_cache import builds_in, compare, count, timed_build  # noqa: E402
from sdbuild.progress import format_table  # noqa: E402


def start_s3() -> tuple[object, str]:
    """moto's S3 server on a free loopback port, and its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--presets", nargs="+", default=["none", "kmeans4", "kmeans6", "linear8"])
    args = parser.parse_args()
    import fsspec

    server, endpoint = start_s3()
    # moto accepts any credentials; the builds find these and the endpoint where s3fs/botocore look.
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    bucket = f"sdbuild-bench-{uuid.uuid4().hex[:8]}"
    store = fsspec.filesystem("s3", endpoint_url=endpoint)
    store.mkdir(bucket)
    # Random-weight models lose more to 4-bit palettes than trained ones: gate low, measure cost.
    sweep = ["-m", f"recipe={args.recipe}", f"quantization={','.join(args.presets)}", "min_psnr.default=15",
             f"cache.remote=s3://{bucket}/cache"]
    rows, seconds = [], {}
    try:
        with tempfile.TemporaryDirectory(prefix="sdbuild-bench-remote-") as tmp:
            for machine in ("A", "B"):
                wall, peak, stderr = timed_build([*sweep, f"cache.dir={tmp}/cache-{machine}",
                                                  f"output.dir={tmp}/out-{machine}"], env)
                seconds[machine] = wall
                rows.append([f"machine {machine}", f"{wall:.1f}", f"{peak:.2f}", count(stderr, "convert"),
                             count(stderr, "compress"), stderr.count("warning:")])
            stored = sum(store.du(f"{bucket}/cache", total=False).values())
            print(format_table(["run", "seconds", "peak GB", "conversions", "compressions", "warnings"], rows))
            print(f"remote store: {stored / 1e6:.1f} MB in s3://{bucket}/cache")
            built_a, built_b = builds_in(f"{tmp}/out-A"), builds_in(f"{tmp}/out-B")
            print(f"{len(built_a)} builds on A, {len(built_b)} on B")
            for build_id, build in built_a.items():
                compare(f"B vs A, build {build_id}", build, built_b[build_id])
            print(f"\nmachine B / machine A = {seconds['B']:.1f} s / {seconds['A']:.1f} s "
                  f"({100 * seconds['B'] / seconds['A']:.0f}%)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
