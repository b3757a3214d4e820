"""The S3 front's cost: the official ``qarnot`` SDK through the front against straight to SeaweedFS.

Usage: ``python bench/s3front.py [--large-mb 256] [--files 1000] [--size 4096] [--rounds 3]``.

Starts its own embedded cluster on free loopback ports (stopped by PID at the end). Two
official-SDK connections as the cluster's owner differ only by their storage URL: the one ``GET
/settings`` hands to that SDK (the front, ``qcompute/server/storage/s3front.py``) and SeaweedFS
itself (what qcompute's SDK and the runners use). Each round, paths interleaved, new buckets:

* one large file: ``add_file`` (boto3 upload_fileobj, 8 MiB parts, 10 threads) and ``get_file``
  (download_fileobj, ranged GETs);
* ``--files`` small files: ``sync_directory`` up (one request at a time, as that SDK does) and
  ``get_all_files`` down;
* ``--files`` HeadObject calls in a row: the added latency of one request.

Prints the median seconds of each path, the ratio front/direct, and the CPU seconds the server
process (where the front runs) spent during each path's transfers.
"""
from __future__ import annotations

import argparse
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

from bench._cluster import running_cluster  # noqa: E402
from bench._report import cluster_facts, conditions, cpu_seconds, storage_urls  # noqa: E402

MB = 1024 * 1024


def timed(action: Callable[[], object], server_pid: int) -> tuple[float, float]:
    cpu, start = cpu_seconds(server_pid), time.perf_counter()
    action()
    return time.perf_counter() - start, cpu_seconds(server_pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large-mb", type=int, default=256)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import qarnot

    work = Path(tempfile.mkdtemp(prefix="bench-s3front-"))
    try:
        small = work / "small"
        for i in range(args.files):
            (small / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
            (small / f"d{i % 10}" / f"f{i:05d}").write_bytes(os.urandom(args.size))
        large = work / "large.bin"
        with large.open("wb") as handle:
            for _ in range(args.large_mb):
                handle.write(os.urandom(MB))

        with running_cluster() as cluster:
            pid = cluster.process.pid
            token = qarnot_token(cluster.config)
            urls = storage_urls(cluster.url)
            facts = cluster_facts(cluster.url)
            conns = {path: qarnot.Connection(cluster_url=cluster.url, client_token=token,
                                             storage_url=url, show_bucket_warnings=False)
                     for path, url in urls.items()}
            rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for round_ in range(args.rounds):
                for path, conn in (conns.items() if round_ % 2 == 0
                                   else reversed(list(conns.items()))):
                    run_round(conn, path, small, large, work, pid, rows, args.files)
            report(rows, args, urls, facts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def qarnot_token(config: Path) -> str:
    import configparser

    parser = configparser.ConfigParser()
    parser.read(config)
    return parser.get("client", "token")


def run_round(conn, path: str, small: Path, large: Path, work: Path, pid: int,
              rows: dict, files: int) -> None:
    bucket = conn.create_bucket(f"bench-{path}-{uuid.uuid4().hex[:8]}")
    bucket.add_string("warm", "warm")  # SeaweedFS makes the bucket's first volume here
    out = work / f"out-{path}"
    shutil.rmtree(out, ignore_errors=True)
    client = conn.s3client
    steps = [
        ("large up", lambda: bucket.add_file(str(large), "large.bin")),
        ("large down", lambda: bucket.get_file("large.bin", str(work / "large.out"))),
        ("small sync up", lambda: bucket.sync_directory(str(small))),
        ("small down", lambda: bucket.get_all_files(str(out))),
        ("HeadObject", lambda: [client.head_object(Bucket=bucket.uuid, Key="d0/f00000")
                                for _ in range(files)]),
    ]
    for name, action in steps:
        rows.setdefault((name, path), []).append(timed(action, pid))
    bucket.delete()


def report(rows: dict, args: argparse.Namespace, urls: dict[str, str], facts: dict) -> None:
    conditions("The S3 front's cost: the official qarnot SDK straight to SeaweedFS (direct) "
               "and through the front", {
                   **facts, "storage": f"direct {urls['direct']}, front {urls['front']}",
                   "runs": f"{args.rounds} rounds (median), the two paths in turn (the order "
                           f"swapped each round), new buckets each round",
                   "server CPU": "the server process (the front runs in it)"})
    print()
    header = (f"{'operation':<34}{'direct':>10}{'front':>10}{'front/direct':>14}"
              f"{'server CPU direct':>19}{'front':>8}")
    print(header)
    print("-" * len(header))
    units = {"large up": f"{args.large_mb} MB up", "large down": f"{args.large_mb} MB down",
             "small sync up": f"sync up {args.files} x {args.size // 1024} KB",
             "small down": f"download {args.files} x {args.size // 1024} KB",
             "HeadObject": f"{args.files} x HeadObject in a row"}
    for name, label in units.items():
        direct = [statistics.median(v) for v in zip(*rows[(name, "direct")], strict=True)]
        front = [statistics.median(v) for v in zip(*rows[(name, "front")], strict=True)]
        if name.startswith("large"):
            extra = f"  ({args.large_mb / direct[0]:.0f} vs {args.large_mb / front[0]:.0f} MB/s)"
        else:
            extra = (f"  ({direct[0] / args.files * 1000:.2f} vs "
                     f"{front[0] / args.files * 1000:.2f} ms each)")
        print(f"{label:<34}{direct[0]:>9.2f}s{front[0]:>9.2f}s{front[0] / direct[0]:>13.2f}x"
              f"{direct[1]:>18.2f}s{front[1]:>7.2f}s{extra}")


if __name__ == "__main__":
    main()
