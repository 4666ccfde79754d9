"""s3copy throughput against the local S3 server (Ceph RGW, tools/s3server), with a plain
sequential boto3 download loop of the same objects as the baseline, in the same run.

    .venv/bin/python benchmarks/bench_s3copy.py [--small 400] [--large 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.s3server_fixture import s3_env, start_s3_server  # noqa: E402

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=400, help="objects of 256 KiB")
    parser.add_argument("--large", type=int, default=4, help="objects of 24 MiB (multipart)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-s3copy-"))
    server = start_s3_server(work / "s3")
    try:
        os.environ.update(s3_env(server))
        from stepmap import runner
        from stepmap.storage import make_s3_client
        client = make_s3_client()
        client.create_bucket(Bucket="bench")
        payload_small, payload_large = os.urandom(256 * 1024), os.urandom(24 * MiB)
        for i in range(args.small):
            client.put_object(Bucket="bench", Key=f"data/small/{i:05d}", Body=payload_small)
        from boto3.s3.transfer import TransferConfig
        import io
        for i in range(args.large):
            client.upload_fileobj(io.BytesIO(payload_large), "bench", f"data/large/{i:02d}",
                                  Config=TransferConfig(multipart_chunksize=8 * MiB))
        total_bytes = args.small * len(payload_small) + args.large * len(payload_large)
        objects = args.small + args.large

        def baseline():
            dest = work / "baseline"
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench",
                                                                        Prefix="data/"):
                for obj in page.get("Contents", []):
                    target = dest / obj["Key"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    body = client.get_object(Bucket="bench", Key=obj["Key"])["Body"]
                    with open(target, "wb") as handle:
                        for chunk in body.iter_chunks(MiB):
                            handle.write(chunk)

        def stepmap(workers, dest=None, expect="copied"):
            def go():
                report = runner.run("s3copy", {"source": "s3://bench/data/",
                                               "dest": str(work / (dest or f"copy{workers}"))},
                                    runner.RunOptions(engine_options={"workers": workers},
                                                      runs=str(work / "runs")))
                assert report.status == "SUCCEEDED" and report.total[expect] == objects
            return go

        rows = []
        for name, fn in [("sequential boto3 download loop (baseline)", baseline),
                         ("stepmap s3copy, local engine, 2 workers", stepmap(2)),
                         ("stepmap s3copy, local engine, 4 workers", stepmap(4)),
                         ("stepmap s3copy again, everything already there (skips)",
                          stepmap(4, "copy4", "skipped"))]:
            began = time.perf_counter()
            fn()
            rows.append((name, time.perf_counter() - began))
        base = rows[0][1]
        print(f"{objects} objects, {total_bytes / MiB:.0f} MiB "
              f"({args.small} × 256 KiB, {args.large} × 24 MiB multipart)\n")
        print("| copier | seconds | MB/s | objects/s | vs baseline |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.2f} | {total_bytes / 1e6 / seconds:.1f} | "
                  f"{objects / seconds:.0f} | {base / seconds:.2f}× |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
