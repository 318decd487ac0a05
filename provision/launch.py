"""Launch: how a run's process starts on a node, and the exact torchrun command of the trainer, for
runs of one node and of many. `Launch.start` starts it with `Node.start_detached` (so it survives
the SSH connection dropping; `train.log`, `train.pid` and `train.exit` land in the run directory).

What the process sees of its machine: an allow-listed environment only. `env -i` drops everything
the machine's shell has (on the local provider that is the service's own environment: its
TRAINYARD_* secrets, cloud and OpenAI keys, HF_TOKEN, AWS_* credentials) except KEPT_ENV, the
basics a shell, Python, torch and CUDA need. The run's own settings and credentials (PYTHONPATH,
settings.node_env, the store's AWS_SHARED_CREDENTIALS_FILE, GLOO_SOCKET_IFNAME ...) never go on
the command line, where `ps` and /proc/PID/cmdline show them to every user of the machine: they are
written to RUN_DIR/.NAME.env (mode 600), which the process's shell reads and deletes before it
becomes the program. The process runs under umask 077, so what it writes (token shards,
checkpoints, logs of its own) is its user's alone.

Every process, on one node (the trainer's line is torchrun's):

    env -i [PATH=... HOME=... (KEPT_ENV)] bash -c 'umask 077 && . "$0" && rm -f -- "$0" && exec "$@"' \
        ./.train.env PYTHON -m torch.distributed.run --standalone --nproc_per_node=P \
        -m trainer.train CONFIG --run-dir RUN_DIR [...]

`--standalone` picks a free port, so several local runs can train side by side.

N nodes x P processes per node, run on every node with its own `--node_rank`:

    cd RUN_DIR && env -i [...] bash -c '...' ./.train.env PYTHON \
        -m torch.distributed.run --nnodes N --nproc_per_node P --node_rank R \
        --master_addr HOST0 --master_port PORT --rdzv_conf timeout=S --max_restarts 0 \
        -m trainer.train CONFIG --run-dir RUN_DIR [...]

Why static rendezvous (`--master_addr/--master_port`, torchrun's default `static` backend)
rather than `--rdzv-backend c10d`: every node's rank is fixed by the controller, so node 0 always
holds global rank 0, the only rank that writes the run directory, metrics and checkpoints. With
c10d the agents take node ranks in arrival order and rank 0 may land on any node, so the
controller would have to search for it. The store is hosted by node 0's torchrun agent on
HOST0:PORT (its private address); the other nodes wait for it up to `rendezvous_timeout_s`, so
the start order does not matter. Elastic restarts are off: a lost node is the controller's job
(new node, resume from the last committed checkpoint), not torchrun's. A static group cannot
take back one lost node: after a node fails, every node's trainer is stopped and all are started
again.

Sockets: gloo (CPU) and NCCL pick a network interface from the host name unless told;
`socket_ifname` sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME. On the simulator every node is
this machine, so it is `lo` and all traffic stays on loopback; on Lambda leave it unset (or name
the private interface). One node needs no sockets between machines, so it is ignored there.

Nodes share no disk, so each node's config names ITS copy of the prepared data (see
docs/trainer-contract.md).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from provision.node import Node

DEFAULT_MASTER_PORT = 29500

#: what a run's process keeps of its machine's environment: the basics of a shell, Python, torch
#: and CUDA; the Hugging Face endpoint and cache the trainer's downloads use (never a token); and
#: the simulator's machine markers (provision/simulator/sshd.py), by which terminating a simulated
#: machine finds every process that ran on it
KEPT_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TERM",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "XDG_CACHE_HOME",
    "HF_ENDPOINT",
    "TRAINYARD_HF_CACHE",
    "TY_INSTANCE",
    "TY_SIM",
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The program's shell: nothing it creates is readable by others; it reads its env file ($0) and
# deletes it, then becomes the program ("$@"). `.` fails loudly if the file is missing.
_RUN = 'umask 077 && . "$0" && rm -f -- "$0" && exec "$@"'


def kept_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a run's process keeps (KEPT_ENV)."""
    return {k: environ[k] for k in KEPT_ENV if k in environ}


def kept_env_prefix(public: Mapping[str, str] | None = None) -> str:
    """`env -i ... ` that keeps only KEPT_ENV of the shell's environment (each variable only where
    the machine has it), then sets `public`: values that are no secret, since `ps` shows them."""
    kept = [f'${{{k}+"{k}=${k}"}}' for k in KEPT_ENV]
    _check_names(public or {})
    return " ".join(["env", "-i", *kept, *(f"{k}={shlex.quote(v)}" for k, v in (public or {}).items())]) + " "


def _check_names(env: Mapping[str, str]) -> None:
    bad = [k for k in env if not _NAME.match(k)]
    if bad:
        raise ValueError(f"not an environment variable name: {', '.join(map(repr, bad))}")


def env_file_text(env: Mapping[str, str]) -> str:
    """`export K=V` lines for a shell to read, values quoted; ValueError for a name that is not a
    shell variable's (it could not be set, and must not smuggle in a command)."""
    _check_names(env)
    return "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items())


@dataclass(frozen=True)
class Launch:
    """A process of a run to start detached on a node: `argv` in `workdir` under `name`, with the
    allow-listed environment plus `env` (see the module docstring). Starting it again (a killed
    trainer) writes its env file again."""

    name: str
    workdir: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    #: start the line with `cd workdir && `, so it also runs as it is when pasted on a node by hand
    #: (after writing its env file)
    cd: bool = False

    @property
    def env_file(self) -> str:
        """Where `start` writes the environment (the process reads it relative to `workdir`)."""
        return f"{self.workdir.rstrip('/')}/.{self.name}.env"

    @property
    def command(self) -> str:
        line = f"{kept_env_prefix()}bash -c {shlex.quote(_RUN)} ./.{self.name}.env {shlex.join(self.argv)}"
        return (f"cd {shlex.quote(self.workdir)} && " if self.cd else "") + line

    @property
    def env_file_text(self) -> str:
        # PYTHONUNBUFFERED: the log a user follows shows progress as it happens
        return env_file_text({"PYTHONUNBUFFERED": "1", **self.env})

    def start(self, node: Node) -> int:
        """Write the env file (mode 600) and start the process; returns its pid."""
        node.write_private(self.env_file, self.env_file_text)
        return node.start_detached(self.command, workdir=self.workdir, name=self.name)


def torchrun_command(
    *,
    python: str,
    nproc_per_node: int,
    config: str,
    run_dir: str,
    train_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = DEFAULT_MASTER_PORT,
    socket_ifname: str | None = None,
    rendezvous_timeout_s: int = 600,
) -> Launch:
    """torchrun + trainer.train on node `node_rank` of `nnodes` (`env`: the run's own variables)."""
    if nnodes < 1:
        raise ValueError("nnodes must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank {node_rank} is outside 0..{nnodes - 1}")
    if nproc_per_node < 1:
        raise ValueError("nproc_per_node must be at least 1")
    variables: dict[str, str] = {}
    if nnodes == 1:
        launcher = ["--standalone", f"--nproc_per_node={nproc_per_node}"]
    else:
        if socket_ifname:
            variables.update(GLOO_SOCKET_IFNAME=socket_ifname, NCCL_SOCKET_IFNAME=socket_ifname)
        launcher = [
            "--nnodes",
            str(nnodes),
            "--nproc_per_node",
            str(nproc_per_node),
            "--node_rank",
            str(node_rank),
            "--master_addr",
            master_addr,
            "--master_port",
            str(master_port),
            "--rdzv_conf",
            f"timeout={int(rendezvous_timeout_s)}",
            "--max_restarts",
            "0",
        ]
    variables.update(env or {})
    args = (
        python,
        "-m",
        "torch.distributed.run",
        *launcher,
        "-m",
        "trainer.train",
        config,
        "--run-dir",
        run_dir,
        *train_args,
    )
    # Many nodes: the line starts in its run directory itself, so it also runs as it is when pasted
    # on a node by hand (e.g. to watch a rendezvous that does not come together).
    return Launch("train", run_dir, args, variables, cd=nnodes > 1)
