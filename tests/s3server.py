"""Test helpers for S3: moto's standalone server on a loopback port, and a TCP proxy in front of it
that can slow the link down or cut connections, for interruption tests.

The server runs in its own process (`python -m moto.server`), so its state and its global
settings (IAM enforcement is process-wide in moto) never mix with another server's, and the code
under test reaches it through boto3 over real HTTP exactly as it reaches AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator

ACCESS_KEY = "testing"  # moto accepts any key while IAM enforcement is off
SECRET_KEY = "testing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(env: dict | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """Start moto's server on a free 127.0.0.1 port; yields its endpoint URL; stops it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def iam_moto_server(bucket: str) -> Iterator[tuple[str, dict]]:
    """moto's server enforcing IAM the way AWS does, with `bucket` made: yields (endpoint, the
    service's long-lived credentials: a user allowed s3, iam and sts). From then on every request
    must be signed by a known key and allowed by its policies."""
    with moto_server() as url:
        iam = admin_client(url, "iam")
        iam.create_user(UserName="trainyard-service")
        iam.put_user_policy(
            UserName="trainyard-service",
            PolicyName="service",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*", "sts:*"], "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="trainyard-service")["AccessKey"]
        admin_client(url).create_bucket(Bucket=bucket)
        req = urllib.request.Request(
            f"{url}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(req, timeout=10).read()
        yield url, {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def admin_client(
    endpoint_url: str, service: str = "s3", key: str = ACCESS_KEY, secret: str = SECRET_KEY, token: str | None = None
):
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}, s3={"addressing_style": "path"}),
    )


class Proxy:
    """A loopback TCP proxy to `upstream_port`: optionally throttles client→server bytes and
    cuts connections after a number of bytes, so a transfer can be caught or broken part-way."""

    def __init__(self, upstream_port: int, rate_bytes_s: float | None = None):
        self.upstream_port, self.rate = upstream_port, rate_bytes_s
        self.cut_after: int | None = None  # cut every connection once it sent this many bytes
        self.cuts = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        sent, t0 = 0, time.monotonic()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if outbound and self.cut_after is not None and sent + len(data) > self.cut_after:
                    self.cuts += 1
                    self.cut_after = None  # one cut, then the link works again
                    break
                dst.sendall(data)
                sent += len(data)
                if outbound and self.rate:
                    ahead = sent / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
