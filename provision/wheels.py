"""The trainer wheel that bootstrap installs on nodes, built once per source version and cached.

The key is a hash of `trainer/` and `pyproject.toml`; the wheel holds the `trainer` package only
(a node never needs the service's code). A warm cache is what makes a bootstrap fast: a process
keeps the path in memory, and processes share the cache folder under a file lock, so a wheel is
built once however many bootstraps ask for it at the same time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from provision.errors import NodeError

log = logging.getLogger("provision.wheels")

#: this checkout: the wheel is built from it
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trainyard" / "wheels"


@dataclass(frozen=True)
class BuiltWheel:
    path: Path
    key: str  # hash of the sources it was built from
    sha256: str  # of the wheel file
    built: bool  # built by this call (False: taken from the cache)
    seconds: float


class WheelCache:
    """The trainer wheel, built once per source version and kept in `cache_dir/KEY/`.

    `get()` blocks while a build runs (another thread or process building the same key waits on
    a file lock, then reuses the result). Safe to share between threads.
    """

    _memo: dict[tuple[str, str], BuiltWheel] = {}
    _memo_lock = threading.Lock()

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        *,
        source_root: Path | str = REPO_ROOT,
        python: str = sys.executable,
        build_timeout_s: float = 300.0,
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.source_root = Path(source_root)
        self.python = python
        self.build_timeout_s = build_timeout_s

    def source_files(self) -> list[Path]:
        """What the wheel is built from (and what its key hashes): `trainer/` and `pyproject.toml`."""
        files = [
            p
            for p in sorted((self.source_root / "trainer").rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        ]
        return [self.source_root / "pyproject.toml", *files]

    def key(self) -> str:
        h = hashlib.sha256()
        for path in self.source_files():
            h.update(path.relative_to(self.source_root).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
        return h.hexdigest()[:20]

    def requirements(self) -> list[str]:
        """The trainer's requirements (`[project.optional-dependencies] trainer`)."""
        text = (self.source_root / "pyproject.toml").read_text()
        if sys.version_info >= (3, 11):
            import tomllib

            project = tomllib.loads(text)["project"]
            return list(project.get("optional-dependencies", {}).get("trainer", []))
        block = re.search(r"(?ms)^trainer\s*=\s*\[(.*?)\]", text)  # 3.10, no tomllib: the one list needed
        return re.findall(r'"([^"]+)"', block.group(1)) if block else []

    def get(self) -> BuiltWheel:
        """The wheel for the current sources: from memory, from the cache folder, or built now."""
        started = time.monotonic()
        key = self.key()
        memo_key = (str(self.cache_dir.resolve()), key)
        with self._memo_lock:
            hit = self._memo.get(memo_key)
        if hit is not None and hit.path.is_file():
            return BuiltWheel(hit.path, key, hit.sha256, False, time.monotonic() - started)
        target = self.cache_dir / key
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(self.cache_dir / ".lock"):
            built = False
            wheel = _only_wheel(target)
            if wheel is None:
                self._build(target)
                built = True
                wheel = _only_wheel(target)
                if wheel is None:
                    raise NodeError(f"wheel build for {self.source_root} left no wheel in {target}")
        result = BuiltWheel(wheel, key, _sha256(wheel), built, time.monotonic() - started)
        with self._memo_lock:
            self._memo[memo_key] = result
        log.info("trainer wheel %s (%s, %.1fs)", wheel.name, "built" if built else "cached", result.seconds)
        return result

    def _build(self, target: Path) -> None:
        """Build into a temporary folder, then rename it to `target` (never a half-written cache)."""
        with tempfile.TemporaryDirectory(prefix="trainyard-wheel-", dir=self.cache_dir) as tmp:
            stage, out = Path(tmp) / "src", Path(tmp) / "out"
            stage.mkdir()
            shutil.copytree(
                self.source_root / "trainer",
                stage / "trainer",
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"),
            )
            (stage / "pyproject.toml").write_text(_node_pyproject((self.source_root / "pyproject.toml").read_text()))
            (stage / "README.md").write_text("trainyard's trainer, as installed on a training node.\n")
            cmd = [
                self.python,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-index",
                "--no-input",
                "--disable-pip-version-check",
                "-q",
                str(stage),
                "-w",
                str(out),
            ]
            if self._has_setuptools():  # build with what is installed: no download
                cmd.insert(4, "--no-build-isolation")
            else:  # an isolated build fetches setuptools from the package index
                cmd.remove("--no-index")
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.build_timeout_s, cwd=tmp)
            except subprocess.TimeoutExpired:
                raise NodeError(f"building the trainer wheel took over {self.build_timeout_s:g}s") from None
            if proc.returncode != 0:
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
                raise NodeError(f"building the trainer wheel failed ({proc.returncode}): {tail}")
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)

    def _has_setuptools(self) -> bool:
        proc = subprocess.run([self.python, "-c", "import setuptools"], capture_output=True, timeout=60)
        return proc.returncode == 0


def _node_pyproject(text: str) -> str:
    """pyproject.toml for the node wheel: without console scripts (their modules are not in it)."""
    return re.sub(r"(?ms)^\[project\.scripts\]\n.*?(?=^\[|\Z)", "", text)


def _only_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    return wheels[0] if len(wheels) == 1 else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
