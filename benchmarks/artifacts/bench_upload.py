"""Upload throughput of a 1 GB checkpoint to a loopback S3 server: ours vs boto3's default
`upload_file`, with a plain local file copy as the ceiling. Ratios come from one run.

    .venv/bin/python benchmarks/artifacts/bench_upload.py [--size-mib 1024] [--rounds 1] [--out FILE]

The server is moto's standalone server (as in the tests), started on a free 127.0.0.1 port. The
checkpoint is one random `model.safetensors` of --size-mib MiB plus the small files of a real
checkpoint, with a real manifest, in a temporary folder that is deleted afterwards. Timed:
- local copy: shutil.copyfile of the big file into another folder (the page cache holds it, so
  this is the cost of moving the bytes once on this machine: the ceiling);
- boto3 upload_file: `client.upload_file(file, bucket, key)` with boto3's default TransferConfig
  (8 MiB parts, 10 threads, its default CRC32 checksum) and a client with default settings;
- ours: `open_store("s3://...").put_checkpoint(folder)` with its defaults (16 MiB parts, 8 threads,
  a SHA-256 per part, the whole-file SHA-256 checked against the manifest, HeadObject after,
  then the manifest), i.e. everything the store promises, all inside the timed region.
The client's own CPU time per upload (user + system of this process; the moto server is another
process) is reported too: on a shared machine it is steadier than wall time.
Each round runs the three (the two uploads in alternating order) and deletes the uploaded objects
before the next. Reported: every round, the best time of each (MB/s and the ratios between them),
and the median of the per-round ours/boto3 ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # s3server.py
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when not pip-installed

from s3server import ACCESS_KEY, SECRET_KEY, moto_server
from trainer.artifacts import manifest as mf
from trainer.artifacts import open_store

MiB = 1 << 20
BUCKET = "ty-bench"


def make_checkpoint(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "model.safetensors", "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n
    for name, n in {"optimizer.pt": 4096, "state.pt": 2048, "config.json": 512, "metrics.json": 64}.items():
        (folder / name).write_bytes(os.urandom(n))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": mf.sha256_file(p)} for p in sorted(folder.iterdir())}
    (folder / mf.MANIFEST).write_text(json.dumps({"format": 1, "step": 1, "tokens": 1, "files": files}))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    ap.add_argument("--part-size-mib", type=int, default=None, help="ours: part size (default: the store's)")
    ap.add_argument("--concurrency", type=int, default=None, help="ours: parallel parts (default: the store's)")
    args = ap.parse_args()

    import boto3
    from botocore.config import Config

    tmp = Path(tempfile.mkdtemp(prefix="ty-bench-"))
    try:
        ckpt = make_checkpoint(tmp / "step_000001", args.size_mib * MiB)
        big = ckpt / "model.safetensors"
        size = sum(p.stat().st_size for p in ckpt.iterdir())
        rounds = []
        with moto_server() as url:
            client = boto3.client(
                "s3",
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}),
            )
            client.create_bucket(Bucket=BUCKET)
            opts = {
                k: v
                for k, v in {
                    "part_size": args.part_size_mib and args.part_size_mib * MiB,
                    "concurrency": args.concurrency,
                }.items()
                if v
            }
            store = open_store(
                f"s3://{BUCKET}/ours",
                endpoint_url=url,
                state_dir=tmp / "state",
                credentials={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
                **opts,
            )

            def boto3_default() -> None:
                client.upload_file(str(big), BUCKET, "boto3/model.safetensors")

            def ours() -> None:
                store.put_checkpoint(ckpt, "step_000001")

            for i in range(args.rounds):
                r = {}
                t0 = time.perf_counter()
                shutil.copyfile(big, tmp / "copy.bin")
                r["local_copy_s"] = time.perf_counter() - t0
                (tmp / "copy.bin").unlink()
                # alternate which S3 upload goes first, so neither always meets the same load
                order = [("boto3_upload_file_s", boto3_default), ("ours_put_checkpoint_s", ours)]
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    r[name] = time.perf_counter() - t0
                    r[name.replace("_s", "_cpu_s")] = time.process_time() - c0  # this process only
                client.delete_object(Bucket=BUCKET, Key="boto3/model.safetensors")
                store.delete_checkpoint("step_000001")
                r["ours_vs_boto3"] = r["boto3_upload_file_s"] / r["ours_put_checkpoint_s"]
                rounds.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
        best = {k: min(r[k] for r in rounds) for k in rounds[0] if k.endswith("_s") and "cpu" not in k}
        cpu = {k: sorted(r[k] for r in rounds)[len(rounds) // 2] for k in rounds[0] if "cpu" in k}
        per_round = sorted(r["ours_vs_boto3"] for r in rounds)
        mb = args.size_mib * MiB / 1e6
        result = {
            "size_bytes": size,
            "ours_options": opts,
            "rounds": rounds,
            "client_cpu_s_median": cpu,
            "MB_per_s": {
                "local_copy": mb / best["local_copy_s"],
                "boto3_upload_file": mb / best["boto3_upload_file_s"],
                "ours": mb / best["ours_put_checkpoint_s"],
            },
            "ours_vs_boto3": best["boto3_upload_file_s"] / best["ours_put_checkpoint_s"],
            "ours_vs_boto3_median_of_rounds": per_round[len(per_round) // 2],
            "ours_vs_local_copy": best["local_copy_s"] / best["ours_put_checkpoint_s"],
            "boto3_vs_local_copy": best["local_copy_s"] / best["boto3_upload_file_s"],
        }
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
