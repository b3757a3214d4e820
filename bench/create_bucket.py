"""What bucket names such as ``meshroomIn`` cost: CreateBucket latency, and the one-time move of
an older data dir's buckets.

Usage: ``python bench/create_bucket.py [--buckets 50] [--objects 100]``.

Starts its own embedded storage (SeaweedFS and the S3 front) in a temporary data dir, on free
loopback ports, and stops it at the end. Prints the median and the 90th percentile of
``--buckets`` CreateBucket calls of a user with a bucket prefix, for each path:

* a lower-case name, straight to SeaweedFS (what qcompute's SDK did before);
* a lower-case name through the front (what both SDKs do now);
* an upper-case name through the front: SeaweedFS refuses it, the front creates it on the filer;
* the same upper-case names again (they exist: the front answers 200).

Then it writes ``--objects`` small objects into each of ``--buckets`` buckets under the old
layout (``/buckets``) and times the start that moves them to ``/qbuckets``.
"""
from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import conditions  # noqa: E402
from qcompute.server.settings import ServerSettings  # noqa: E402
from qcompute.server.storage import EmbeddedStorage  # noqa: E402
from qcompute.server.storage.seaweed import BUCKETS_FOLDER, SeaweedFS  # noqa: E402
from qcompute.server.testing import free_port  # noqa: E402


def timed(names: list[str], call: Callable[[str], object]) -> str:
    seconds = []
    for name in names:
        started = time.perf_counter()
        call(name)
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return (f"median {statistics.median(seconds) * 1000:6.2f} ms, "
            f"p90 {seconds[int(len(seconds) * 0.9)] * 1000:6.2f} ms")


class OldLayout(SeaweedFS):
    """SeaweedFS as qcompute started it before: buckets in weed's default /buckets."""

    def _filer_toml(self) -> str:
        return super()._filer_toml().replace(f'buckets_folder = "{BUCKETS_FOLDER}"', "")

    def _move_legacy_buckets(self, timeout: float) -> None:
        pass


def create_latency(root: Path, count: int) -> None:
    storage = EmbeddedStorage(ServerSettings(data_dir=root, s3_port=free_port()))
    storage.start()
    try:
        weed, front = storage.seaweed, storage.create_bucket_url
        weed.configure_identity("bench", "bench", "bench-secret", "bench-")
        direct = weed.client("bench", "bench-secret")
        via_front = boto3.session.Session().client(
            "s3", endpoint_url=front, aws_access_key_id="bench",
            aws_secret_access_key="bench-secret", region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}))
        tag = secrets.token_hex(3)
        rows = [
            ("lower case, SeaweedFS", [f"bench-d{tag}-{i}" for i in range(count)], direct),
            ("lower case, front", [f"bench-f{tag}-{i}" for i in range(count)], via_front),
            ("Upper_Case, front", [f"bench-U{tag}_{i}" for i in range(count)], via_front),
            ("Upper_Case again, front", [f"bench-U{tag}_{i}" for i in range(count)], via_front),
        ]
        for label, names, client in rows:
            result = timed(names, lambda name: client.create_bucket(Bucket=name))
            print(f"CreateBucket {label:26s} {result}")
    finally:
        storage.stop()


def move_time(root: Path, buckets: int, objects: int) -> None:
    port, secret = free_port(), secrets.token_urlsafe(16)
    old = OldLayout(root, port, "admin", secret)
    old.start()
    try:
        client = old.client("admin", secret)
        for b in range(buckets):
            client.create_bucket(Bucket=f"old-{b}")
            for o in range(objects):
                client.put_object(Bucket=f"old-{b}", Key=f"dir/{o}.txt", Body=b"x")
    finally:
        old.stop()
    for label in ("start that moves", "next start"):
        new = SeaweedFS(root, port, "admin", secret)
        started = time.perf_counter()
        new.start()
        print(f"{label} {buckets} buckets x {objects} objects: "
              f"{time.perf_counter() - started:.2f} s")
        new.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=50)
    parser.add_argument("--objects", type=int, default=100)
    args = parser.parse_args()
    conditions("CreateBucket latency, and the move of an older data dir's buckets", {
        "storage": "embedded SeaweedFS and the S3 front, no API server",
        "runs": f"{args.buckets} CreateBucket calls per path, in this order; "
                f"{args.buckets} x {args.objects} objects moved"})
    with tempfile.TemporaryDirectory(prefix="qc-bench-") as tmp:
        create_latency(Path(tmp) / "latency", args.buckets)
        move_time(Path(tmp) / "move", args.buckets, args.objects)


if __name__ == "__main__":
    main()
