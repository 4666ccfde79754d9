"""s3copy throughput against the local S3 server (Ceph RGW, tools/s3server), against boto3's
TransferManager (16 threads, no verification, no fsync) downloading the same objects, each
copier a fresh process, interleaved, in the same run.

    .venv/bin/python benchmarks/bench_s3copy.py [--small 200] [--large 4] [--repeat 3]
    .venv/bin/python benchmarks/bench_s3copy.py --before /tmp/old/src   # also older s3copies

Default data: 200 objects of 1 MiB and 4 of 64 MiB uploaded in 8 MiB parts (478 MB). stepmap
verifies every object (MD5 / multipart ETag) and fsyncs every file; the TransferManager does
neither. Peak memory is the largest sum of resident set sizes over the copier process and its
descendants (sampled every 20 ms); CPU seconds are the user + system time of the copier and
every descendant it waited for (not the S3 server's, which serves both alike). Peak memory
is given twice: summed RSS counts a page a forked worker shares with its parent twice, the
proportional set size (PSS) once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from process_tree import run_measured

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.s3server_fixture import s3_env, start_s3_server  # noqa: E402

MiB = 1 << 20

TRANSFER_MANAGER = """
import sys
from pathlib import Path
from boto3.s3.transfer import TransferConfig
from s3transfer.manager import TransferManager
sys.path.insert(0, {src!r})
from stepmap.storage import make_s3_client
client = make_s3_client(connections=16)
dest = Path(sys.argv[1])
keys = []
for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="data/"):
    keys += [obj["Key"] for obj in page.get("Contents", [])]
with TransferManager(client, TransferConfig(max_concurrency=16)) as manager:
    for key in keys:
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        manager.download("bench", key, str(target))
"""


def measure(cmd: list[str], env: dict) -> tuple[float, int, int, float, str]:
    """(wall seconds, peak tree RSS, peak tree PSS, CPU seconds of the tree, stdout) of one
    run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pss = [0]
    seconds, peak, out, err, code = run_measured(cmd, env=env, pss=pss)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code:
        raise SystemExit(f"{cmd[:5]} failed: {err.decode()[-800:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, peak, pss[0], cpu, out.decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=200, help="objects of 1 MiB")
    parser.add_argument("--large", type=int, default=4, help="objects of 64 MiB (8 MiB parts)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", action="append", default=[],
                        help="another stepmap src directory to measure too, repeatable (e.g. "
                        "`git archive OLD src | tar -x -C /tmp/old`)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-s3copy-"))
    server = start_s3_server(work / "s3")
    try:
        env = {**os.environ, **s3_env(server), "PYTHONPATH": str(ROOT / "src")}
        os.environ.update(s3_env(server))
        sys.path.insert(0, str(ROOT / "src"))
        from boto3.s3.inject import upload_fileobj
        from boto3.s3.transfer import TransferConfig
        from stepmap.storage import make_s3_client
        client = make_s3_client()
        client.create_bucket(Bucket="bench")
        small, large = os.urandom(MiB), os.urandom(64 * MiB)
        for i in range(args.small):
            client.put_object(Bucket="bench", Key=f"data/small/{i:05d}", Body=small)
        for i in range(args.large):
            upload_fileobj(client, io.BytesIO(large), "bench", f"data/large/{i:02d}",
                           Config=TransferConfig(multipart_chunksize=8 * MiB))
        total = args.small * len(small) + args.large * len(large)
        objects = args.small + args.large
        copiers = {
            "boto3 TransferManager, 16 threads (baseline; no verification, no fsync)":
                lambda dest: [sys.executable, "-c", TRANSFER_MANAGER.format(src=str(ROOT / "src")),
                              str(dest)],
            "stepmap s3copy (defaults: local engine; verified, fsynced)":
                lambda dest: [sys.executable, "-m", "stepmap", "run", "s3copy", "--source",
                              "s3://bench/data/", "--dest", str(dest), "--quiet", "--results",
                              str(work / "runs")],
        }
        stepmap_run = copiers["stepmap s3copy (defaults: local engine; verified, fsynced)"]
        for before in args.before:
            copiers[f"stepmap s3copy from {before}"] = \
                lambda dest, src=before: ["env", f"PYTHONPATH={src}", *stepmap_run(dest)]
        measured: dict[str, list] = {name: [] for name in copiers}
        loads = []  # the 1-minute load average before each run
        for attempt in range(args.repeat):  # interleaved: both see the same load
            for name, command in copiers.items():
                dest = work / f"dest-{attempt}"
                loads.append(os.getloadavg()[0])
                seconds, peak, pss, cpu, out = measure(command(dest), env)
                measured[name].append((seconds, peak, pss, cpu))
                copied = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
                assert copied == total, f"{name}: {copied} of {total} bytes"
                if name.startswith("stepmap"):  # every object copied and verified
                    summary = json.loads(out)
                    assert (summary["copied"], summary["unverified"]) == (objects, 0), summary
                shutil.rmtree(dest)
        print(f"{objects} objects, {total / 1e6:.0f} MB ({args.small} × 1 MiB, {args.large} × "
              f"64 MiB multipart); {os.cpu_count()} cores shared with the S3 server; load "
              f"{min(loads):.1f}–{max(loads):.1f} (median {statistics.median(loads):.1f}); "
              f"medians of {args.repeat}, interleaved\n")
        print("| copier | seconds | MB/s | peak memory (RSS) | peak memory (PSS) | CPU seconds "
              "| vs baseline |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = statistics.median(row[0] for row in next(iter(measured.values())))
        for name, rows in measured.items():
            seconds = statistics.median(row[0] for row in rows)
            peak = max(row[1] for row in rows)
            pss = max(row[2] for row in rows)
            cpu = statistics.median(row[3] for row in rows)
            print(f"| {name} | {seconds:.2f} | {total / 1e6 / seconds:.0f} | "
                  f"{peak / MiB:.0f} MiB | {pss / MiB:.0f} MiB | {cpu:.2f} | "
                  f"{base / seconds:.2f}× |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
