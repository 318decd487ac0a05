"""Benchmark: the service image (docker/service.Dockerfile) built and started with podman: build time
(cold, after a code change, unchanged), image size, and the time from `podman run` to healthy.

    .venv/bin/python benchmarks/image/bench_image.py               # 5 starts of each kind
    .venv/bin/python benchmarks/image/bench_image.py --starts 10 --json
    .venv/bin/python benchmarks/image/bench_image.py --no-cold      # skip the cold build (minutes)

Needs podman and the stand-in for python:3.11-slim (scripts/oci-standin.sh, run first if missing).
Builds (tag localhost/trainyard:bench; the image tests use localhost/trainyard:test):

- cold: `--no-cache`, every layer from scratch on the base: apt (openssh-client) and pip (the
  service's dependencies) from the package registries;
- code change: the sources copied to a temporary context with one file changed, as after an edit:
  the dependency layer is reused, the sources' layers and the editable install run again;
- unchanged: the same context again: every layer from the cache.

Starts, each on a fresh volume and removed after:

- fresh: the image's command on a new SQLite database (migrated at start), on the host's network
  listening on 127.0.0.1 and a free port (no API token needed there);
- defaults: the image as it is (0.0.0.0:8000) in a network of its own, on a volume where a
  one-off container made the first API token (not timed).

The time is from just before `podman run -d` until the image's HEALTHCHECK passes, run by
`podman healthcheck run` every 0.1 s (podman's own schedule needs systemd; one check takes
0.2-0.5 s, so a time can be late by that much). Timings never go in tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "image"))
from podman_helpers import BASE_IMAGE, REPO, Made, build, image_size, install_problem, run_problem

TAG = "localhost/trainyard:bench"
#: what .dockerignore lets into the build context
SOURCES = (
    "pyproject.toml",
    "README.md",
    "alembic",
    "orchestrator",
    "provision",
    "trainer",
    "docker/healthcheck.py",
    "docker/start.py",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def changed_context(folder: Path) -> Path:
    """The sources in `folder`, with orchestrator/__init__.py changed as an edit would."""
    for name in SOURCES:
        src, dst = REPO / name, folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    shutil.copy2(REPO / ".dockerignore", folder / ".dockerignore")
    init = folder / "orchestrator" / "__init__.py"
    init.write_text(init.read_text() + "\n# an edit\n")
    return folder


def start_fresh(made: Made) -> float:
    port = free_port()
    env = {"TRAINYARD_HOST": "127.0.0.1", "TRAINYARD_PORT": str(port)}
    c = made.new(TAG, env=env, mounts=[(made.volume().name, "/data", "")]).start()
    return c.wait_healthy()


def start_defaults(made: Made) -> float:
    data = made.volume()
    mount = [(data.name, "/data", "")]
    token = ("trainyard", "token", "create", "--name", "admin", "--scope", "admin")
    first = made.new(TAG, mounts=mount, network="none", command=token).run_to_end()
    assert first.returncode == 0, first.stderr
    return made.new(TAG, mounts=mount, network="none").start().wait_healthy()


def summary(values: list[float]) -> dict:
    return {
        "median_s": round(statistics.median(values), 2),
        "min_s": round(min(values), 2),
        "max_s": round(max(values), 2),
        "n": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="starts of each kind")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    problem = install_problem() or run_problem()
    if problem:
        sys.exit(problem)

    result: dict = {"builds_s": {}}
    if not args.no_cold:
        result["builds_s"]["cold"] = round(build(TAG, no_cache=True), 1)
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-image-") as tmp:
        context = changed_context(Path(tmp))
        result["builds_s"]["code_change"] = round(build(TAG, context=context), 1)
        result["builds_s"]["unchanged"] = round(build(TAG, context=context), 1)
    build(TAG)  # the image of the repository as it is, for the starts
    size, base = image_size(TAG), image_size(BASE_IMAGE)
    result["size_mb"] = {"image": round(size / 1e6), "base": round(base / 1e6), "added": round((size - base) / 1e6)}

    for kind, start in (("fresh", start_fresh), ("defaults", start_defaults)):
        times = []
        for _ in range(args.starts):
            made = Made()
            try:
                times.append(start(made))
            finally:
                made.remove_all()
        result[f"to_healthy_{kind}"] = summary(times)

    print(f"build: {', '.join(f'{k} {v} s' for k, v in result['builds_s'].items())}")
    sizes = result["size_mb"]
    print(
        f"size: {sizes['image']} MB ({sizes['base']} MB base stand-in + {sizes['added']} MB of the Dockerfile's layers)"
    )
    for kind in ("fresh", "defaults"):
        t = result[f"to_healthy_{kind}"]
        print(f"run -> healthy ({kind}): median {t['median_s']} s, min {t['min_s']} s, max {t['max_s']} s, n={t['n']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
