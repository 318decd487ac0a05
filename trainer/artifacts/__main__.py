"""Push, pull and list checkpoints (and single files) in an artifact store.

    python -m trainer.artifacts push CKPT_DIR URI      upload a committed checkpoint folder to URI
                                                       (its manifest last); re-run to resume
    python -m trainer.artifacts pull URI LOCAL_DIR     download a committed checkpoint, verified,
                                                       manifest last, renamed into place
    python -m trainer.artifacts list URI               committed checkpoints under URI, one URI a line
    python -m trainer.artifacts push-file FILE URI     one file (a data shard), SHA-256 recorded
    python -m trainer.artifacts pull-file URI FILE     one file, checked against that SHA-256

URI is file:///abs/path or s3://bucket/prefix. For s3://, the endpoint comes from --endpoint-url
or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, and credentials from boto3's usual chain (a node gets
credentials for its run only, in AWS_SHARED_CREDENTIALS_FILE or AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, minted by the service's orchestrator/grants.py).
push and pull print one JSON summary line on stdout.

Exit codes: 0 ok; 2 bad input (bad URI, not a committed checkpoint, hash mismatch, access denied),
printed as one line `error: ...` on stderr; 1 the store could not be reached after retries.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from trainer.artifacts import ArtifactError, open_store, split_uri
from trainer.errors import EXIT_BAD_INPUT, run_cli

MiB = 1 << 20


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as every trainer command
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m trainer.artifacts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (s3:// only)")
    common.add_argument("--part-size-mib", type=int, default=16, help="multipart part size (min 5)")
    common.add_argument("--concurrency", type=int, default=8, help="parallel parts per file")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("push", parents=[common], help="upload a committed checkpoint folder")
    p.add_argument("ckpt_dir")
    p.add_argument("uri")
    p = sub.add_parser("pull", parents=[common], help="download a committed checkpoint")
    p.add_argument("uri")
    p.add_argument("local_dir")
    p = sub.add_parser("list", parents=[common], help="committed checkpoints under a URI")
    p.add_argument("uri")
    p = sub.add_parser("push-file", parents=[common], help="upload one file")
    p.add_argument("file")
    p.add_argument("uri")
    p = sub.add_parser("pull-file", parents=[common], help="download one file")
    p.add_argument("uri")
    p.add_argument("file")
    return ap


def _open(uri: str, args: argparse.Namespace):
    options = {}
    if split_uri(uri)[0] == "s3":
        options = {"part_size": args.part_size_mib * MiB, "concurrency": args.concurrency}
    return open_store(uri, endpoint_url=args.endpoint_url, **options)


def _parent_and_name(uri: str) -> tuple[str, str]:
    """A file URI split into (the store's URI, the object's key): s3://b/p/x -> (s3://b/p, x)."""
    scheme, bucket, path = split_uri(uri)
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name:
        raise ArtifactError(f"{uri} names no file")
    root = f"file://{parent or '/'}" if scheme == "file" else f"s3://{bucket}/{parent}".rstrip("/")
    return root, name


def _bad(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "push":
        if not Path(args.ckpt_dir).is_dir():
            return _bad(f"{args.ckpt_dir} is not a folder")
        stats = _open(args.uri, args).put_checkpoint(args.ckpt_dir)
        print(json.dumps({"pushed": args.uri, **stats.as_dict()}), flush=True)
    elif args.command == "pull":
        stats = _open(args.uri, args).get_checkpoint("", args.local_dir)
        print(json.dumps({"pulled": args.uri, "to": args.local_dir, **stats.as_dict()}), flush=True)
    elif args.command == "list":
        store = _open(args.uri, args)
        for prefix in store.list_checkpoints():
            print(store.uri_of(prefix), flush=True)
    elif args.command == "push-file":
        root, name = _parent_and_name(args.uri)
        sha = _open(root, args).put_file(args.file, name)
        print(json.dumps({"pushed": args.uri, "sha256": sha}), flush=True)
    else:  # pull-file
        root, name = _parent_and_name(args.uri)
        sha = _open(root, args).get_file(name, args.file)
        print(json.dumps({"pulled": args.uri, "to": args.file, "sha256": sha}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
