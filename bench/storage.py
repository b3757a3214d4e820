"""Storage: qcompute's sync engine against the official ``qarnot`` SDK and the boto3 floor.

Usage: ``python bench/storage.py [--files 2000] [--size 4096] [--rounds 3] [--warmup 1]
[--big-mb 1024] [--big-rounds 3] [--boto3-threads 8,16,32] [--boto3-transfers 4x8,8x8,...]``.

Starts its own embedded cluster on free loopback ports (stopped by PID at the end) and runs the
contenders against it, each in its own buckets, in an order rotated every round (none always
goes first):

* **qcompute** and **boto3** talk to SeaweedFS directly; the **official** SDK gets, from
  ``GET /settings``, the S3 front (a relay in the server process) as every official-SDK user
  of a qcompute cluster does.
* small files (``--files`` of ``--size`` bytes in 20 folders): the first upload sync, a resync
  with nothing changed, a download into an empty folder and a download again with nothing
  changed. The median of ``--rounds`` rounds after ``--warmup`` uncounted ones, each round with
  new buckets (one object written and deleted in each before the timing, so SeaweedFS has made
  the bucket's first volume). boto3 does only the transfers, at its best: one shared client,
  ``put_object`` / ``get_object`` (body written to the file) in a thread pool whose size is
  the fastest of a sweep over ``--boto3-threads`` (up and down apart): the floor.
* one large file (``--big-mb``, default 1 GB) up and down, each contender in a subprocess of its
  own, ``--big-rounds`` times: the median MB/s and the largest peak RSS growth of that process
  over its baseline (``ru_maxrss`` minus the RSS just before the transfer). qcompute syncs the
  file (``sync_files`` then ``sync_remote_to_local``), the official SDK uses
  ``add_file``/``get_file``, boto3 ``upload_file``/``download_file`` with the fastest
  ``TransferConfig`` (threads x part size) of a sweep over ``--boto3-transfers`` (up and down
  apart; one try of each before the rounds).

Prints the conditions (machine, load average, versions, storage paths, sizes, rounds, order,
boto3's settings), one table with seconds, files/s or MB/s, and the ratios official/qcompute
and qcompute/boto3, then the goals.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import running_cluster  # noqa: E402
from bench._report import (  # noqa: E402
    cluster_facts, conditions, rotated, rss_kb, storage_urls)

MB = 1024 * 1024


# ----------------------------------------------------------------------------- data
def make_small_files(root: Path, count: int, size: int) -> dict[str, str]:
    files = {}
    for i in range(count):
        folder = root / f"d{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{i:05d}.bin"
        path.write_bytes(os.urandom(size))
        files[path.relative_to(root).as_posix()] = str(path)
    old = time.time() - 3600  # as files are before a sync: not written this very second
    for path in files.values():
        os.utime(path, (old, old))
    return files


def make_big_file(path: Path, megabytes: int) -> None:
    block = os.urandom(MB)
    with open(path, "wb") as handle:
        for i in range(megabytes):
            handle.write(i.to_bytes(8, "little") + block[8:])  # every MiB differs


def _timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _warm(conn: Any, bucket: str) -> None:
    """Write and delete one object, so the bucket has its first volume before the timing: a new
    SeaweedFS bucket makes its first writes wait for it (0.2 s, sometimes 1 s when they are
    concurrent), a cost of creating buckets, not of syncing."""
    conn._storage.put_bytes(bucket, "warm-up", b"x")
    conn._storage.delete_object(bucket, "warm-up")


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ----------------------------------------------------------------------------- small files
def _sync_rounds(bucket: Any, src: Path, out: Path, count: int) -> dict[str, float]:
    """Up, up again (nothing changed), down, down again: the same calls in both SDKs."""
    result = {
        "up": _timed(lambda: bucket.sync_directory(str(src))),
        "resync": _timed(lambda: bucket.sync_directory(str(src))),
        "down": _timed(lambda: bucket.get_all_files(str(out))),
        "redown": _timed(lambda: bucket.get_all_files(str(out))),
    }
    assert len(list(out.rglob("*.bin"))) == count
    return result


def small_qcompute(cluster: Any, src: Path, files: dict[str, str], work: Path,
                   tag: str) -> dict[str, float]:
    conn = cluster.connection()
    bucket = conn.create_bucket(f"bench-qc-{tag}")
    _warm(conn, bucket.name)
    out = _fresh(work / "qc-out")
    result = _sync_rounds(bucket, src, out, len(files))
    bucket.delete()
    conn.close()
    return result


def small_official(cluster: Any, src: Path, files: dict[str, str], work: Path,
                   tag: str) -> dict[str, float]:
    import qarnot

    official = qarnot.Connection(fileconf=str(cluster.config))  # storage: the S3 front
    bucket = official.create_bucket(f"bench-of-{tag}")
    warm = cluster.connection()
    _warm(warm, bucket.uuid)
    warm.close()
    out = _fresh(work / "of-out")
    result = _sync_rounds(bucket, src, out, len(files))
    bucket.delete()
    return result


def small_boto3(cluster: Any, files: dict[str, str], work: Path, tag: str,
                threads: tuple[int, int]) -> dict[str, float]:
    """The transfers alone, as a boto3 user does them at best: one shared client, PutObject
    and GetObject (the body written to its file) in a thread pool, ``threads`` (up, down)."""
    conn = cluster.connection()
    s3 = conn._storage.client  # the same endpoint, identity and client settings, plain calls
    name = f"bench-b3-{tag}"
    s3.create_bucket(Bucket=name)
    _warm(conn, name)
    out = _fresh(work / "b3-out")

    def put(item: tuple[str, str]) -> None:
        key, path = item
        with open(path, "rb") as handle:
            s3.put_object(Bucket=name, Key=key, Body=handle.read())

    def get(key: str) -> None:
        body = s3.get_object(Bucket=name, Key=key)["Body"]
        with open(out / key, "wb") as handle:
            handle.write(body.read())

    def download() -> None:
        for folder in {os.path.dirname(key) for key in files}:
            (out / folder).mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(threads[1]) as pool:
            list(pool.map(get, files))

    with ThreadPoolExecutor(threads[0]) as pool:
        up = _timed(lambda: list(pool.map(put, files.items())))
    result = {"up": up, "down": _timed(download)}
    assert len(list(out.rglob("*.bin"))) == len(files)
    conn._storage.delete_objects(name, files)
    s3.delete_bucket(Bucket=name)
    conn.close()
    return result


def small_round(cluster: Any, src: Path, files: dict[str, str], work: Path, tag: str,
                order: list[str], threads: tuple[int, int]) -> dict[str, dict[str, float]]:
    """One round: each contender, in ``order``, moves ``src`` into a new bucket and back."""
    runs = {
        "qcompute": lambda: small_qcompute(cluster, src, files, work, tag),
        "official": lambda: small_official(cluster, src, files, work, tag),
        "boto3": lambda: small_boto3(cluster, files, work, tag, threads),
    }
    return {name: runs[name]() for name in order}


def sweep_small(cluster: Any, files: dict[str, str], work: Path,
                candidates: list[int]) -> tuple[int, int]:
    """boto3's fastest thread counts for the small files (up, down), one try each."""
    if len(candidates) == 1:
        return candidates[0], candidates[0]
    tried = {}
    for threads in candidates:
        tried[threads] = small_boto3(cluster, files, work, f"sweep{threads}-{os.getpid()}",
                                     (threads, threads))
        print(f"boto3 small-file sweep, {threads} threads: up {tried[threads]['up']:.2f} s, "
              f"down {tried[threads]['down']:.2f} s", flush=True)
    return (min(tried, key=lambda t: tried[t]["up"]), min(tried, key=lambda t: tried[t]["down"]))


# ----------------------------------------------------------------------------- one big file
def _same_content(a: str, b: str) -> bool:
    """Sizes equal and 16 sampled MiB equal (hashing 1 GB per contender would dominate)."""
    size = os.path.getsize(a)
    if size != os.path.getsize(b):
        return False
    with open(a, "rb") as x, open(b, "rb") as y:
        for i in range(16):
            offset = (size - MB) * i // 15 if size > MB else 0
            x.seek(offset)
            y.seek(offset)
            if x.read(MB) != y.read(MB):
                return False
    return True


def transfer_config(text: str) -> Any:
    """``"4x8"``: a boto3 TransferConfig of 4 threads and 8 MiB parts."""
    from boto3.s3.transfer import TransferConfig

    threads, part_mb = (int(n) for n in text.split("x"))
    return TransferConfig(max_concurrency=threads, multipart_chunksize=part_mb * MB)


def big_child(contender: str, conf: str, path: str, work: str,
              transfers: tuple[str, str]) -> None:
    """In a subprocess: upload ``path``, download it back; print timings and memory as JSON.
    ``transfers``: boto3's settings up and down (see :func:`transfer_config`)."""
    out = os.path.join(work, f"{contender}-out")
    os.makedirs(out, exist_ok=True)
    bucket_name = f"bench-big-{contender[:2]}-{os.getpid()}"
    if contender == "qcompute":
        import qcompute

        conn = qcompute.Connection(fileconf=conf)
        bucket = conn.create_bucket(bucket_name)
        up_action = lambda: bucket.sync_files({"big.bin": path})  # noqa: E731
        down_action = lambda: bucket.sync_remote_to_local(out)  # noqa: E731
        cleanup = bucket.delete
    elif contender == "official":
        import qarnot

        conn = qarnot.Connection(fileconf=conf)
        bucket = conn.create_bucket(bucket_name)
        up_action = lambda: bucket.add_file(path, "big.bin")  # noqa: E731
        down_action = lambda: bucket.get_file("big.bin", os.path.join(out, "big.bin"))  # noqa: E731
        cleanup = bucket.delete
    else:
        import qcompute

        conn = qcompute.Connection(fileconf=conf)
        s3 = conn._storage.client
        s3.create_bucket(Bucket=bucket_name)
        up_config, down_config = (transfer_config(t) for t in transfers)
        up_action = lambda: s3.upload_file(  # noqa: E731
            path, bucket_name, "big.bin", Config=up_config)
        down_action = lambda: s3.download_file(  # noqa: E731
            bucket_name, "big.bin", os.path.join(out, "big.bin"), Config=down_config)

        def cleanup() -> None:
            s3.delete_object(Bucket=bucket_name, Key="big.bin")
            s3.delete_bucket(Bucket=bucket_name)
    baseline = rss_kb() or 0
    up = _timed(up_action)
    down = _timed(down_action)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok = _same_content(path, os.path.join(out, "big.bin"))
    cleanup()
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"up": up, "down": down, "baseline_kb": baseline, "peak_kb": peak,
                      "ok": ok}))


def big_round(cluster: Any, path: Path, work: Path, contender: str,
              transfers: tuple[str, str] = ("8x8", "8x8")) -> dict[str, Any]:
    reply = subprocess.run(
        [sys.executable, __file__, "--child", contender, "--conf", str(cluster.config),
         "--path", str(path), "--work", str(work), "--transfers=" + ",".join(transfers)],
        capture_output=True, text=True, check=False)
    if reply.returncode != 0:
        raise RuntimeError(f"{contender} child failed:\n{reply.stderr[-3000:]}")
    return json.loads(reply.stdout.strip().splitlines()[-1])


def sweep_big(cluster: Any, path: Path, work: Path, candidates: list[str]) -> tuple[str, str]:
    """boto3's fastest transfer settings for the large file (up, down), one try each."""
    if len(candidates) == 1:
        return candidates[0], candidates[0]
    tried = {}
    for text in candidates:
        tried[text] = big_round(cluster, path, work, "boto3", (text, text))
        print(f"boto3 large-file sweep, {text.replace('x', ' threads x ')} MiB parts: "
              f"up {tried[text]['up']:.2f} s, down {tried[text]['down']:.2f} s", flush=True)
    return (min(tried, key=lambda t: tried[t]["up"]), min(tried, key=lambda t: tried[t]["down"]))


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median times; the largest RSS growth (memory is a bound, not an average)."""
    worst = max(runs, key=lambda r: r["peak_kb"] - r["baseline_kb"])
    return {"up": statistics.median(r["up"] for r in runs),
            "down": statistics.median(r["down"] for r in runs),
            "baseline_kb": worst["baseline_kb"], "peak_kb": worst["peak_kb"],
            "ok": all(r["ok"] for r in runs)}


# ----------------------------------------------------------------------------- report
def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(small: dict[str, dict[str, float]], big: dict[str, dict[str, Any]], files: int,
           size: int, big_mb: int) -> None:
    def cell(seconds: Optional[float], per: Optional[float] = None, unit: str = "") -> str:
        if seconds is None:
            return "-"
        return f"{seconds:7.2f} s {per / seconds:8.0f} {unit}" if per else f"{seconds:7.3f} s"

    rows = [
        (f"sync up {files} x {size // 1024} KB", "up", files, "files/s"),
        ("resync, nothing changed", "resync", None, ""),
        (f"download {files} x {size // 1024} KB", "down", files, "files/s"),
        ("download again, nothing changed", "redown", None, ""),
    ]
    head = f"{'operation':34} {'qcompute':>22} {'official qarnot':>22} {'boto3 floor':>22}" \
           f" {'official/qc':>11} {'qc/boto3':>9}"
    print()
    print(head)
    print("-" * len(head))
    for label, key, per, unit in rows:
        values = {name: small.get(name, {}).get(key) for name in ("qcompute", "official", "boto3")}
        print(f"{label:34} {cell(values['qcompute'], per, unit):>22} "
              f"{cell(values['official'], per, unit):>22} {cell(values['boto3'], per, unit):>22} "
              f"{_ratio(values['official'], values['qcompute']):>11} "
              f"{_ratio(values['qcompute'], values['boto3']):>9}")
    for label, key in ((f"{big_mb} MB upload", "up"), (f"{big_mb} MB download", "down")):
        values = {name: big.get(name, {}).get(key) for name in ("qcompute", "official", "boto3")}
        print(f"{label:34} {cell(values['qcompute'], big_mb, 'MB/s'):>22} "
              f"{cell(values['official'], big_mb, 'MB/s'):>22} "
              f"{cell(values['boto3'], big_mb, 'MB/s'):>22} "
              f"{_ratio(values['official'], values['qcompute']):>11} "
              f"{_ratio(values['qcompute'], values['boto3']):>9}")
    growth = {name: (r["peak_kb"] - r["baseline_kb"]) / 1024 for name, r in big.items()}
    print(f"{'RSS growth, ' + str(big_mb) + ' MB round trip':34} "
          + " ".join(f"{(f'{growth[n]:.0f} MB' if n in growth else '-'):>22}"
                     for n in ("qcompute", "official", "boto3")))
    bad = [name for name, r in big.items() if not r.get("ok")]
    if bad:
        print(f"CONTENT MISMATCH after the round trip: {bad}")

    print("\ngoals (qcompute):")
    qc, of, b3 = small.get("qcompute", {}), small.get("official", {}), small.get("boto3", {})

    def goal(text: str, value: Optional[float], ok: Optional[bool]) -> None:
        verdict = "-" if ok is None else ("met" if ok else "MISSED")
        shown = "-" if value is None else f"{value:.2f}"
        print(f"  {text:58} {shown:>8}  {verdict}")

    speedup = of["up"] / qc["up"] if qc.get("up") and of.get("up") else None
    goal("small-file sync >= 10x faster than official (x)", speedup,
         None if speedup is None else speedup >= 10)
    floor = qc["up"] / b3["up"] if qc.get("up") and b3.get("up") else None
    goal("small-file sync within 1.5x of the boto3 floor (qc/boto3)", floor,
         None if floor is None else floor <= 1.5)
    goal("resync with no change < 0.5 s (s)", qc.get("resync"),
         None if qc.get("resync") is None else qc["resync"] < 0.5)
    for key, text in (("up", "upload"), ("down", "download")):
        if "qcompute" in big and "boto3" in big:
            share = big["boto3"][key] / big["qcompute"][key]
            goal(f"{big_mb} MB {text} >= 90% of boto3's throughput (share)", share, share >= 0.9)
    if "qcompute" in growth:
        goal(f"{big_mb} MB round trip RSS growth <= 100 MB (MB)", growth["qcompute"],
             growth["qcompute"] <= 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="small-file rounds of every contender before the timed ones")
    parser.add_argument("--big-mb", type=int, default=1024, help="0 skips the large file")
    parser.add_argument("--big-rounds", type=int, default=3)
    parser.add_argument("--contenders", default="qcompute,official,boto3")
    parser.add_argument("--boto3-threads", default="8,16,32",
                        help="boto3's thread counts for the small files: the fastest up and "
                             "the fastest down are kept (one value: no sweep)")
    parser.add_argument("--boto3-transfers", default="4x8,8x8,16x8,4x32,8x32",
                        help="boto3's large-file settings, THREADSxPART_MiB: the fastest up "
                             "and the fastest down are kept (one value: no sweep)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--conf", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--transfers", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        big_child(args.child, args.conf, args.path, args.work,
                  tuple(args.transfers.split(",")))
        return
    contenders = args.contenders.split(",")
    work = Path(tempfile.mkdtemp(prefix="qcompute-bench-storage-"))
    # qcompute's ETag cache goes to the bench's temp dir, not the user's cache
    os.environ["QCOMPUTE_CACHE_DIR"] = str(work / "cache")
    load_at_start = os.getloadavg()[0]
    print(f"load average {load_at_start:.2f}; data in {work}", flush=True)
    try:
        files = make_small_files(work / "small", args.files, args.size)
        with running_cluster() as cluster:
            facts = {**cluster_facts(cluster.url), **_storage_paths(cluster.url, contenders)}
            small, threads = run_small(cluster, files, work, contenders, args)
            big, transfers = run_big(cluster, work, contenders, args)
        conditions("Storage: qcompute, the official qarnot SDK and the boto3 floor",
                   {**facts, **_run_facts(args, contenders, load_at_start, threads, transfers)})
        report(small, big, args.files, args.size, args.big_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_small(cluster: Any, files: dict[str, str], work: Path, contenders: list[str],
              args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], tuple[int, int]]:
    """boto3's sweep, the warm-up rounds, then the timed rounds: their medians, boto3's threads."""
    threads = (16, 16)
    if "boto3" in contenders:
        threads = sweep_small(cluster, files, work,
                              [int(n) for n in args.boto3_threads.split(",")])
    rounds = []
    for i in range(-args.warmup, args.rounds):
        tag = f"{'w' if i < 0 else 'r'}{abs(i)}-{os.getpid()}"
        result = small_round(cluster, work / "small", files, work, tag, rotated(contenders, i),
                             threads)
        shutil.rmtree(work / "cache", ignore_errors=True)  # every round starts cold
        print(("warm-up" if i < 0 else f"round {i + 1}") + ": " + ", ".join(
            f"{name} " + " ".join(f"{k}={v:.2f}" for k, v in r.items())
            for name, r in result.items()), flush=True)
        if i >= 0:
            rounds.append(result)
    small = {name: {key: statistics.median(r[name][key] for r in rounds)
                    for key in rounds[0][name]} for name in contenders}
    return small, threads


def run_big(cluster: Any, work: Path, contenders: list[str],
            args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], tuple[str, str]]:
    """boto3's sweep, then the rounds of the large file: each contender's summary, boto3's
    transfer settings."""
    if not args.big_mb:
        return {}, ("-", "-")
    path = work / "big.bin"
    make_big_file(path, args.big_mb)
    transfers = ("-", "-")
    if "boto3" in contenders:
        transfers = sweep_big(cluster, path, work, args.boto3_transfers.split(","))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for i in range(args.big_rounds):
        for name in rotated(contenders, i):
            runs[name].append(big_round(cluster, path, work, name, transfers))
            print(f"{args.big_mb} MB round {i + 1} {name}: {runs[name][-1]}", flush=True)
    path.unlink()
    return {name: _summary(r) for name, r in runs.items()}, transfers


def _run_facts(args: argparse.Namespace, contenders: list[str], load_at_start: float,
               threads: tuple[int, int], transfers: tuple[str, str]) -> dict[str, str]:
    facts = {
        "load average at the start": f"{load_at_start:.2f} (1 min)",
        "small files": f"{args.files} x {args.size} B in 20 folders; median of {args.rounds} "
                       f"rounds after {args.warmup} warm-up round(s); new buckets each round, "
                       f"one object written and deleted in each before the timing; "
                       f"qcompute's ETag cache cold each round",
        "large file": f"{args.big_mb} MB, each contender in a process of its own; median of "
                      f"{args.big_rounds} rounds" if args.big_mb else "skipped",
        "order": "rotated each round: " + "; ".join(
            ",".join(rotated(contenders, i)) for i in range(len(contenders))),
    }
    if "boto3" in contenders:
        up, down = (t.replace("x", " threads x ") + " MiB parts" for t in transfers)
        facts["boto3 settings"] = (
            f"small files {threads[0]} threads up, {threads[1]} down (of {args.boto3_threads}); "
            + (f"large file up {up}, down {down} (of {args.boto3_transfers}); "
               if args.big_mb else "")
            + "the fastest of a sweep in this run, unless one value was given")
    return facts


def _storage_paths(url: str, contenders: list[str]) -> dict[str, str]:
    urls = storage_urls(url)
    paths = {"qcompute": f"SeaweedFS direct ({urls['direct']})",
             "official": f"the S3 front, a relay in the server process ({urls['front']})",
             "boto3": f"SeaweedFS direct ({urls['direct']})"}
    return {f"storage of {name}": paths[name] for name in contenders}


if __name__ == "__main__":
    main()
