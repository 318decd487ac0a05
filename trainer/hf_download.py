"""OpenAI's GPT-2 weights from the Hugging Face Hub, without huggingface_hub.

    folder = fetch_repo("openai-community/gpt2")   # -> <cache>/openai-community/gpt2

Fetches `config.json` and `model.safetensors` from `{endpoint}/{repo}/resolve/main/{file}`, where
the endpoint is `HF_ENDPOINT` (the variable huggingface_hub honours, e.g. a mirror) or
https://huggingface.co. Files land in `TRAINYARD_HF_CACHE/<repo>` (default
~/.cache/trainyard/hf/<repo>) and are reused by later calls without any request. Each file is
written to a `.part` file beside it and renamed into place only when the bytes received match the
announced Content-Length (and, when the server announces one, its SHA-256: the Hub sends
`X-Linked-Etag` for large files), so a cut-off download is never used. Every request has a
timeout (connect and each read); a lock file keeps two processes from fetching the same file at
once. Progress goes to stderr for files over a few MB.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from filelock import FileLock

from trainer.errors import CheckpointError, TrainerError

DEFAULT_ENDPOINT = "https://huggingface.co"
FILES = ("config.json", "model.safetensors")
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_PROGRESS_MIN_BYTES = 8 << 20
_SHA256 = re.compile(r'^(?:W/)?"?([0-9a-f]{64})"?$')


class DownloadError(TrainerError):
    """The Hub could not be reached, or sent less than it announced; worth retrying (exit 1)."""

    exit_code = 1


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_root() -> Path:
    env = os.environ.get("TRAINYARD_HF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trainyard" / "hf"


def fetch_repo(
    repo: str,
    files: tuple[str, ...] = FILES,
    timeout: float = TIMEOUT_S,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> Path:
    """The local folder holding `files` of `repo`, downloading those not cached yet."""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo) or ".." in repo:
        raise CheckpointError(f"invalid Hugging Face repo id {repo!r}")
    folder = cache_root() / repo
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        dest = folder / name
        if dest.is_file():
            continue
        with FileLock(folder / f".{name}.lock"):  # another process may be fetching it: wait for it
            if not dest.is_file():
                _download(f"{endpoint()}/{repo}/resolve/main/{name}", dest, timeout, log)
    return folder


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Keeps the SHA-256 the Hub announces on its redirect to the file's storage."""

    def __init__(self):
        self.sha256: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.sha256 = self.sha256 or _announced_sha256(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _announced_sha256(headers) -> str | None:
    for key in ("X-Linked-Etag", "ETag"):
        m = _SHA256.match((headers.get(key) or "").strip())
        if m:
            return m.group(1)
    return None


def _download(url: str, dest: Path, timeout: float, log: Callable[[str], None]) -> None:
    part = dest.with_name(f".{dest.name}.part")
    redirects = _Redirects()
    opener = urllib.request.build_opener(redirects)
    req = urllib.request.Request(url, headers={"User-Agent": "trainyard"})
    h = hashlib.sha256()
    got, t0, shown = 0, time.monotonic(), 0.0
    try:
        with opener.open(req, timeout=timeout) as resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            sha256 = redirects.sha256 or _announced_sha256(resp.headers)
            while True:
                chunk = resp.read(_CHUNK)  # the timeout bounds every read, not just the connect
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                now = time.monotonic()
                if total and total >= _PROGRESS_MIN_BYTES and (now - shown >= 2 or got == total):
                    shown = now
                    log(
                        f"download {dest.name}: {got / 1e6:.1f}/{total / 1e6:.1f} MB "
                        f"({100 * got / total:.0f}%, {got / 1e6 / max(now - t0, 1e-6):.1f} MB/s)"
                    )
            out.flush()
            os.fsync(out.fileno())
        if total is not None and got != total:
            raise DownloadError(f"{url}: the connection ended after {got} of {total} bytes")
        if sha256 is not None and h.hexdigest() != sha256:
            raise DownloadError(f"{url}: the bytes received have sha256 {h.hexdigest()}, the server announced {sha256}")
        os.replace(part, dest)
    except urllib.error.HTTPError as e:
        part.unlink(missing_ok=True)
        if e.code in (401, 403, 404):
            raise CheckpointError(f"{url}: HTTP {e.code} (no such file, or not public)") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # refused, reset,
        # timed out, cut off (IncompleteRead)
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: {type(reason).__name__}: {reason}".rstrip(": ")) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
