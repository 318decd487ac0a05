"""Launch: the exact torchrun command that starts the trainer on one node of a run, for runs of one
node and of many. Pure: it builds a shell line; the controller starts it with `Node.start_detached`
(so it survives the SSH connection dropping; `train.log`, `train.pid` and `train.exit` land in the
run directory).

One node:

    env PYTHONUNBUFFERED=1 [K=V ...] PYTHON -m torch.distributed.run --standalone \
        --nproc_per_node=P -m trainer.train CONFIG --run-dir RUN_DIR [...]

`--standalone` picks a free port, so several local runs can train side by side.

N nodes x P processes per node, run on every node with its own `--node_rank`:

    cd RUN_DIR && env PYTHONUNBUFFERED=1 [GLOO_SOCKET_IFNAME=IF ...] [K=V ...] PYTHON \
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

import shlex
from typing import Mapping, Sequence

DEFAULT_MASTER_PORT = 29500


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
) -> str:
    """The shell command that starts torchrun + trainer.train on node `node_rank` of `nnodes`."""
    if nnodes < 1:
        raise ValueError("nnodes must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank {node_rank} is outside 0..{nnodes - 1}")
    if nproc_per_node < 1:
        raise ValueError("nproc_per_node must be at least 1")
    variables: dict[str, str] = {}
    if nnodes == 1:
        start = ""
        launcher = ["--standalone", f"--nproc_per_node={nproc_per_node}"]
    else:
        # Starts in its run directory itself, so the line also runs as it is when pasted on a node
        # by hand (e.g. to watch a rendezvous that does not come together).
        start = f"cd {shlex.quote(run_dir)} && "
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
    args = [
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
    ]
    return start + env_prefix(variables) + shlex.join(args)


def env_prefix(env: Mapping[str, str]) -> str:
    """`env K=V ... ` that every trainer process on a node starts with."""
    # PYTHONUNBUFFERED: the log a user follows should show progress as it happens
    merged = {"PYTHONUNBUFFERED": "1", **env}
    return "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in merged.items()) + " "
