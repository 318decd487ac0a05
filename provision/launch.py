"""Launch: the exact torchrun command for each node of a run, and starting it detached on each.

N nodes x P processes per node, run on every node with its own `--node_rank`:

    cd RUN_DIR && env PYTHONUNBUFFERED=1 [GLOO_SOCKET_IFNAME=IF ...] VENV/bin/python \
        -m torch.distributed.run --nnodes N --nproc_per_node P --node_rank R \
        --master_addr HOST0 --master_port PORT --rdzv_conf timeout=S --max_restarts 0 \
        -m trainer.train CONFIG --run-dir RUN_DIR --set data_dir=DATA_DIR [...]

Why static rendezvous (`--master_addr/--master_port`, torchrun's default `static` backend)
rather than `--rdzv-backend c10d`: every node's rank is fixed by the controller, so node 0 always
holds global rank 0, the only rank that writes the run directory, metrics and checkpoints. With
c10d the agents take node ranks in arrival order and rank 0 may land on any node, so the
controller would have to search for it. The store is hosted by node 0's torchrun agent on
HOST0:PORT (its private address); the other nodes wait for it up to `rendezvous_timeout_s`, so
the start order does not matter. Elastic restarts are off: a lost node is the controller's job
(new node, resume from the last committed checkpoint), not torchrun's.

Sockets: gloo (CPU) and NCCL pick a network interface from the host name unless told;
`socket_ifname` sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME. On the simulator every node is
this machine, so it is `lo` and all traffic stays on loopback; on Lambda leave it unset (or name
the private interface).

Each node gets `--set data_dir=...` pointing at ITS copy of the prepared data (nodes share no
disk; see docs/trainer-contract.md). The command runs through `Node.start_detached`, so it
survives the SSH connection dropping; `train.log`, `train.pid` and `train.exit` land in the run
directory.

Blocks: `start_torchrun` runs one short command per node (plus one status check each); it does not
wait for training. Idempotent: a node whose trainer is already running is left alone.
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from provision.errors import NodeError
from provision.node import Node, ProcessStatus

log = logging.getLogger("provision.launch")

DEFAULT_MASTER_PORT = 29500
#: the detached process's name on the node: RUN_DIR/train.log, train.pid, train.exit
PROCESS_NAME = "train"


def torchrun_command(
    *,
    python: str,
    nnodes: int,
    nproc_per_node: int,
    node_rank: int,
    master_addr: str,
    master_port: int = DEFAULT_MASTER_PORT,
    config: str,
    run_dir: str,
    data_dir: str | None = None,
    train_args: Sequence[str] = (),
    socket_ifname: str | None = None,
    env: Mapping[str, str] | None = None,
    rendezvous_timeout_s: int = 600,
) -> str:
    """The shell command that starts node `node_rank`'s torchrun. Pure: runs nothing."""
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank {node_rank} is outside 0..{nnodes - 1}")
    if nproc_per_node < 1:
        raise ValueError("nproc_per_node must be at least 1")
    variables = {"PYTHONUNBUFFERED": "1"}
    if socket_ifname:
        variables.update(GLOO_SOCKET_IFNAME=socket_ifname, NCCL_SOCKET_IFNAME=socket_ifname)
    variables.update(env or {})
    args = [
        "env", *(f"{k}={v}" for k, v in variables.items()),
        python, "-m", "torch.distributed.run",
        "--nnodes", str(nnodes), "--nproc_per_node", str(nproc_per_node), "--node_rank", str(node_rank),
        "--master_addr", master_addr, "--master_port", str(master_port),
        "--rdzv_conf", f"timeout={int(rendezvous_timeout_s)}", "--max_restarts", "0",
        "-m", "trainer.train", config, "--run-dir", run_dir,
    ]
    if data_dir is not None:
        args += ["--set", f"data_dir={json.dumps(data_dir)}"]  # a YAML string: any path parses
    args += list(train_args)
    return f"cd {shlex.quote(run_dir)} && " + " ".join(shlex.quote(a) for a in args)


@dataclass(frozen=True)
class NodeTarget:
    """One node of a run, as bootstrap left it."""

    node: Node
    private_ip: str  # how the other nodes reach it (only node 0's is used: the rendezvous host)
    python: str  # the venv interpreter (`BootstrapResult.python`)
    run_dir: str
    data_dir: str | None = None


def put_config(node: Node, config: Mapping, remote_path: str) -> None:
    """Write a train config (as JSON, which the trainer's YAML reader takes) to `remote_path`."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(dict(config), fh, indent=1)
        local = Path(fh.name)
    try:
        node.put(local, remote_path)
    finally:
        local.unlink(missing_ok=True)


def start_torchrun(
    targets: Sequence[NodeTarget],
    *,
    config: str,
    nproc_per_node: int,
    master_port: int = DEFAULT_MASTER_PORT,
    train_args: Sequence[str] = (),
    socket_ifname: str | None = None,
    env: Mapping[str, str] | None = None,
    rendezvous_timeout_s: int = 600,
    on_event: Callable[[str], None] | None = None,
) -> list[int]:
    """Start torchrun detached on every target (node rank = position); return the pids.

    `config` is the train config's path on the nodes (see `put_config`); a relative path is
    taken in each node's run directory (the command starts there), so nodes whose home
    directories differ can share one name.
    Node 0 starts first since its agent hosts the rendezvous store. A node whose trainer is
    already running is not started again (its recorded pid is returned), so a retried start
    never runs two trainers in one run directory. A static group cannot take back one lost
    node: after a node fails, `stop_torchrun` every node and start them all again (the trainer
    resumes from its last committed checkpoint).
    """
    if not targets:
        raise ValueError("start_torchrun needs at least one node")
    master = targets[0].private_ip
    pids = []
    for rank, target in enumerate(targets):
        if target.node.status(workdir=target.run_dir, name=PROCESS_NAME).running:
            pid = _recorded_pid(target)
            _event(on_event, f"node {rank} ({target.node.label}): torchrun already running (pid {pid})")
            pids.append(pid)
            continue
        command = torchrun_command(
            python=target.python, nnodes=len(targets), nproc_per_node=nproc_per_node, node_rank=rank,
            master_addr=master, master_port=master_port, config=config, run_dir=target.run_dir,
            data_dir=target.data_dir, train_args=train_args, socket_ifname=socket_ifname, env=env,
            rendezvous_timeout_s=rendezvous_timeout_s,
        )
        pid = target.node.start_detached(command, workdir=target.run_dir, name=PROCESS_NAME)
        _event(on_event, f"node {rank} ({target.node.label}): started torchrun (pid {pid}, "
                         f"{len(targets)} nodes x {nproc_per_node}, rendezvous {master}:{master_port})")
        pids.append(pid)
    return pids


def statuses(targets: Sequence[NodeTarget]) -> list[ProcessStatus]:
    """Each node's torchrun: running, or how it ended. One command per node."""
    return [t.node.status(workdir=t.run_dir, name=PROCESS_NAME) for t in targets]


def stop_torchrun(targets: Sequence[NodeTarget], *, grace_s: int = 10) -> None:
    """SIGTERM each node's torchrun process group, SIGKILL after `grace_s`. Idempotent."""
    for t in targets:
        t.node.stop(workdir=t.run_dir, name=PROCESS_NAME, grace_s=grace_s)


def _recorded_pid(target: NodeTarget) -> int:
    text = target.node.read_text(f"{target.run_dir.rstrip('/')}/{PROCESS_NAME}.pid") or ""
    try:
        return int(text.strip())
    except ValueError:
        raise NodeError(f"{target.node.label}: torchrun runs but its pid file reads {text!r}") from None


def _event(sink: Callable[[str], None] | None, message: str) -> None:
    log.info("%s", message)
    if sink is not None:
        sink(message)
