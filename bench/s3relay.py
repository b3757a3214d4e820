"""The S3 relay's cost (``qcompute/server/storage/relay.py``): boto3 through the relay against
straight to SeaweedFS.

Usage: ``python bench/s3relay.py [--large-mb 128] [--requests 500] [--rounds 3]``.

Starts its own ``weed mini`` on free loopback ports and a relay in this process in front of it
(both on loopback here: the relay is the one the server runs on its public address), stopped at
the end. Each round, paths in turn (order swapped each round), one new bucket per path:

* one large object: ``upload_fileobj`` (8 MiB parts, 10 threads) and ``download_fileobj``;
* ``--requests`` PutObject of 4 KiB, one at a time;
* ``--requests`` HeadObject in a row: the added latency of one request.

Prints the median seconds of each path and the ratio relay/direct. The relay's threads run in
this process, which also runs boto3: its CPU is not told apart.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import conditions  # noqa: E402
from qcompute.server.storage.relay import TcpRelay  # noqa: E402
from qcompute.server.storage.seaweed import SeaweedFS, pick_free_port  # noqa: E402

MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large-mb", type=int, default=128)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from boto3.s3.transfer import TransferConfig

    work = Path(tempfile.mkdtemp(prefix="bench-s3relay-"))
    weed = SeaweedFS(work / "s3", pick_free_port(), "bench-admin", "bench-secret-0123456789")
    relay = TcpRelay("127.0.0.1", 0, ("127.0.0.1", weed.s3_port))
    try:
        weed.start()
        relay.start()
        large = os.urandom(args.large_mb * MB)
        small = os.urandom(4096)
        transfer = TransferConfig(multipart_chunksize=8 * MB, max_concurrency=10)
        urls = {"direct": weed.endpoint_url, "relay": f"http://127.0.0.1:{relay.port}"}
        rows: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            for path in (list(urls) if round_ % 2 == 0 else list(urls)[::-1]):
                client = _client(urls[path], weed)
                bucket = f"bench-{path}-{uuid.uuid4().hex[:8]}"
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="warm", Body=b"warm")
                steps: list[tuple[str, Callable[[], object]]] = [
                    ("large up", lambda: client.upload_fileobj(
                        io.BytesIO(large), bucket, "large", Config=transfer)),
                    ("large down", lambda: client.download_fileobj(
                        bucket, "large", io.BytesIO(), Config=transfer)),
                    ("PutObject 4 KiB", lambda: [client.put_object(
                        Bucket=bucket, Key=f"s{i}", Body=small) for i in range(args.requests)]),
                    ("HeadObject", lambda: [client.head_object(Bucket=bucket, Key="warm")
                                            for _ in range(args.requests)]),
                ]
                for name, action in steps:
                    start = time.perf_counter()
                    action()
                    rows.setdefault((name, path), []).append(time.perf_counter() - start)
        conditions("The S3 relay's cost: boto3 straight to SeaweedFS (direct) and through the "
                   "relay", {"storage": f"weed mini {weed.endpoint_url}, relay {urls['relay']}",
                             "runs": f"{args.rounds} rounds (median), paths in turn",
                             "sizes": f"large {args.large_mb} MiB; {args.requests} requests"})
        print(f"\n  {'step':18} {'direct s':>10} {'relay s':>10} {'relay/direct':>13}")
        for name in dict.fromkeys(name for name, _ in rows):
            direct = statistics.median(rows[name, "direct"])
            relayed = statistics.median(rows[name, "relay"])
            print(f"  {name:18} {direct:10.3f} {relayed:10.3f} {relayed / direct:13.2f}")
    finally:
        relay.stop()
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)


def _client(url: str, weed: SeaweedFS):
    """A boto3 client as the runners build it (qcompute/server/runner_files.py)."""
    import boto3
    from botocore.config import Config

    from qcompute._storage import no_continue_for_empty_body

    client = boto3.session.Session().client(
        "s3", endpoint_url=url, aws_access_key_id=weed.admin_access_key,
        aws_secret_access_key=weed.admin_secret_key, region_name="us-east-1",
        config=Config(max_pool_connections=10))
    client.meta.events.register("before-call.s3", no_continue_for_empty_body)
    return client


if __name__ == "__main__":
    main()
