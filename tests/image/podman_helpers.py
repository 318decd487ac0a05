"""Podman for the image tests and the image benchmark: the service image built from
docker/service.Dockerfile, containers of it, and what podman says about them.

These machines have no Docker engine and cannot pull from image registries: podman runs with runc
and the flags that scripts/oci-standin.sh explains, on the stand-in for `python:3.11-slim` that
script builds (`install_problem()` runs it). Containers use the host's network, so they reach the
tests' servers on loopback (PostgreSQL, the Lambda simulator, moto) and the tests reach them; the
services in them listen on 127.0.0.1 and a free port. `network="none"` gives one a network of its
own (loopback only) where the image's own address, 0.0.0.0:8000, exposes nothing.

Imported as `podman_helpers` (pytest puts tests/image on sys.path; the benchmark adds it itself).
Run as a script (`python3 tests/image/podman_helpers.py`, the standard library only) it makes the
stand-in and builds the tests' image ahead of them: scripts/install-podman.sh --prepare-image
starts it in the background. Builds take a lock, so the tests' own build waits for that one and
finds every layer in the cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "service.Dockerfile"
STANDIN = REPO / "scripts" / "oci-standin.sh"
BASE_IMAGE = "docker.io/library/python:3.11-slim"
#: the image the tests build (the benchmark uses another tag)
IMAGE_TAG = "localhost/trainyard:test"
#: the lock scripts/oci-standin.sh takes too: one build at a time on this machine
LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "trainyard-podman.lock"
PODMAN = ("podman", "--runtime", "runc")  # crun cannot use this sandbox's cgroups
#: this sandbox's hard limits are below podman's defaults
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
#: the user the image runs as (docker/service.Dockerfile: useradd --uid 1000)
IMAGE_UID = 1000


def podman(*args: str, timeout: float = 60, check: bool = True, env: Mapping[str, str] | None = None):
    """`podman ARGS` to its end; AssertionError (with its output) if it fails and `check`."""
    proc = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def install_problem(timeout: float = 600) -> str | None:
    """Why podman or the stand-in for the base image is missing, or None once both are there:
    runs scripts/oci-standin.sh, which installs podman where missing, waits for the stand-in that
    scripts/test.sh builds in the background, or builds it (a minute or two)."""
    try:
        made = subprocess.run(
            ["bash", str(STANDIN)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return f"scripts/oci-standin.sh did not finish in {timeout:.0f} s"
    if made.returncode != 0:
        return f"scripts/oci-standin.sh failed: {made.stderr.strip()[-1500:]}"
    return None


def run_problem() -> str | None:
    """Why podman cannot run a container here (its own words), or None when it can."""
    probe = podman("run", "--rm", "--network", "none", *LIMITS, BASE_IMAGE, "true", check=False, timeout=120)
    return f"podman cannot run a container here: {probe.stderr.strip()[-1500:]}" if probe.returncode else None


def build(tag: str, *, context: Path = REPO, no_cache: bool = False, timeout: float = 900) -> float:
    """Build docker/service.Dockerfile from `context` (the repository root) as `tag`, in docker
    format (podman's default OCI format drops HEALTHCHECK); seconds taken. The image the tag named
    before, now untagged, is removed (each change of the sources would leave one behind)."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        return _build(tag, context, no_cache, timeout)


def _build(tag: str, context: Path, no_cache: bool, timeout: float) -> float:
    before = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    started = time.monotonic()
    podman(
        "build",
        "--pull=never",
        *(["--no-cache"] if no_cache else []),
        "--format",
        "docker",
        "--network",
        "host",  # pip reaches the package index through the host's network and settings
        *LIMITS,
        "-f",
        str(DOCKERFILE),
        "-t",
        tag,
        str(context),
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    after = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if before and before != after:
        tags = podman("image", "inspect", "--format", "{{.RepoTags}}", before, check=False).stdout.strip()
        if tags == "[]":  # untagged now; still used by a container of another session: left
            podman("rmi", before, check=False)
    return seconds


def image_size(tag: str) -> int:
    """Bytes, as `podman images` counts them (all layers, the base's included)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def image_text(tag: str) -> str:
    """Everything the image says about how it was made: its config and its full history."""
    inspected = podman("image", "inspect", tag).stdout
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}} {{.Comment}}", tag).stdout
    return inspected + "\n" + history


class Container:
    """A container of `image`, started detached (`start`) and removed by `remove`.

    `env`: settings passed through from this process's environment by name (`-e NAME`), so their
    values never appear on podman's command line; `mounts`: (host path or volume name, container
    path, options) for `-v`; `command`: instead of the image's CMD.
    """

    def __init__(
        self,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str, str]] = (),
        network: str = "host",
        command: Sequence[str] = (),
    ):
        self.image, self.env, self.mounts, self.network, self.command = image, dict(env or {}), mounts, network, command
        self.name = f"trainyard-test-{uuid.uuid4().hex[:10]}"
        self.started_at: float | None = None

    def _run_args(self) -> list[str]:
        args = ["--name", self.name, "--network", self.network, *LIMITS]
        for name in self.env:
            args += ["-e", name]
        for source, target, options in self.mounts:
            args += ["-v", f"{source}:{target}" + (f":{options}" if options else "")]
        return [*args, self.image, *self.command]

    def _podman_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self) -> Container:
        self.started_at = time.monotonic()
        podman("run", "-d", *self._run_args(), env=self._podman_env(), timeout=120)
        return self

    def run_to_end(self, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run it in the foreground, as a one-off command, and remove it (`podman run --rm`)."""
        return podman("run", "--rm", *self._run_args(), env=self._podman_env(), timeout=timeout, check=False)

    def state(self) -> dict:
        return json.loads(podman("inspect", self.name).stdout)[0]["State"]

    def health(self) -> str:
        """The health status podman records for it: starting, healthy or unhealthy."""
        state = self.state()
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")

    def wait_healthy(self, timeout: float = 120) -> float:
        """Run the image's health check until it passes (podman's own schedule needs systemd,
        which this machine lacks, so the check is run here, as its timer would); seconds since
        `start`. AssertionError with the logs if the container exits first or after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            check = podman("healthcheck", "run", self.name, check=False, timeout=30)
            if check.returncode == 0:
                return time.monotonic() - (self.started_at or 0)
            status = self.state()
            assert status["Running"], f"the container exited ({status['ExitCode']}):\n{self.logs()[-4000:]}"
            assert time.monotonic() < deadline, f"not healthy after {timeout:.0f} s:\n{self.logs()[-4000:]}"
            time.sleep(0.1)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *cmd, check=False, timeout=timeout)

    def users(self) -> tuple[str, set[int]]:
        """(the user its main process runs as, by the container's names; the uids, real, effective,
        saved and filesystem, of that process on the host)."""
        inside = podman("top", self.name, "user").stdout.split()[1]
        pid = self.state()["Pid"]
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        return inside, {int(u) for u in uids}

    def remove(self) -> None:
        # -v: with the anonymous volume podman made for the image's VOLUME where none was mounted;
        # -t 1: a test's container, no need to wait for a graceful stop
        for _ in range(3):  # one that is stopping by itself right then may refuse at first
            done = podman("rm", "-f", "-v", "-t", "1", self.name, check=False, timeout=60)
            if done.returncode == 0 or "no such container" in done.stderr:
                return
            time.sleep(1)


class Volume:
    """A named podman volume, removed by `remove`."""

    def __init__(self):
        self.name = f"trainyard-test-{uuid.uuid4().hex[:10]}"
        podman("volume", "create", self.name)

    def remove(self) -> None:
        podman("volume", "rm", "-f", self.name, check=False)


class Made:
    """The containers and volumes a test made (`new`, `volume`), all removed by `remove_all`."""

    def __init__(self):
        self.containers: list[Container] = []
        self.volumes: list[Volume] = []

    def new(self, image: str, **kwargs) -> Container:
        self.containers.append(Container(image, **kwargs))
        return self.containers[-1]

    def volume(self) -> Volume:
        self.volumes.append(Volume())
        return self.volumes[-1]

    def remove_all(self) -> None:
        for thing in [*self.containers, *self.volumes]:  # a volume in use cannot be removed
            thing.remove()


if __name__ == "__main__":
    problem = install_problem()
    if problem:
        sys.exit(problem)
    print(f"{IMAGE_TAG} built in {build(IMAGE_TAG):.0f} s")
