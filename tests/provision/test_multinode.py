"""Two simulated nodes, one DDP group: place, bootstrap, torchrun on both with static rendezvous on
node 0's private address (1 gloo process each), a dropped SSH connection mid-training, and
termination. Everything is real: the simulator's REST API, sshd, torchrun, the trainer. The nodes
are driven as the controller drives them: the config written with `Node.write_json`, the command
from `provision.launch.torchrun_command`, started with `Node.start_detached` and watched with
`Node.status`.

The simulated nodes are this machine, so gloo is pinned to `lo` and every byte stays on loopback.
See test_bootstrap.py for why the node venv reaches torch through `torch_site_packages`.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provision.base import InstanceStatus
from provision.bootstrap import BootstrapSpec, bootstrap
from provision.lambda_cloud import LambdaProvider
from provision.launch import torchrun_command
from provision.placement import place
from provision.simulator.sshd import INSTANCE_ENV, marked_pids
from provision.transport.connection import SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys
from provision.wheels import REPO_ROOT, WheelCache
from provision_helpers import pid_alive, wait_active

NODE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
TORCH_SITE = str(Path(importlib.util.find_spec("torch").origin).parent.parent)

#: ~24 steps of a 1-layer, 64-wide GPT on 2 x 1 CPU process (tokens per step 64 x 4 x 2 = 512);
#: each node's config adds the data_dir of its own copy of the data
TINY = {
    "model": "gpt2-tiny",
    "model_overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2},
    "seq_len": 64,
    "micro_batch": 4,
    "grad_accum": 1,
    "lr": 2e-3,
    "min_lr": 2e-4,
    "warmup_steps": 2,
    "max_tokens": 12288,
    "log_every": 4,
    "eval_every": 1000,
    "eval_tokens": 512,
    "checkpoint_every": 12,
    "keep_last": 2,
    "device": "cpu",
    "dtype": "fp32",
    "seed": 7,
}


@pytest.fixture
def provider(client, key_pair, ssh_port, tmp_path):
    p = LambdaProvider(
        client,
        ssh_key_name="trainyard-multinode",
        private_key_file=key_pair[0],
        known_hosts=PinnedHostKeys(tmp_path / "known_hosts"),
        ssh_user=getpass.getuser(),
        ssh_port=ssh_port,
        ssh_timeouts=SshTimeouts(connect_s=2, command_s=60),
    )
    p.ensure_ssh_key(key_pair[1])
    return p


def free_port() -> int:
    """A port nobody listens on (torchrun's store listens on every interface)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def prepare_locally(out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.prepare",
            "--source",
            "builtin:corpus",
            "--out",
            str(out),
            "--max-tokens",
            "60000",
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def in_parallel(fn, items):
    results, errors = [None] * len(items), []

    def work(i, item):
        try:
            results[i] = fn(item)
        except Exception as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, item)) for i, item in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def metrics(node, run_dir) -> list[dict]:
    text = node.read_text(f"{run_dir}/metrics.jsonl") or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_torchrun_command_is_exact():
    multi = torchrun_command(
        python="/v/bin/python",
        nproc_per_node=8,
        config="cfg.json",
        run_dir="/r un",
        train_args=["--stop-at-step", "5"],
        env={"OMP_NUM_THREADS": "1"},
        nnodes=2,
        node_rank=1,
        master_addr="10.0.0.5",
        master_port=29501,
        socket_ifname="eth1",
    )
    assert multi.command.startswith("cd '/r un' && env -i ${PATH+\"PATH=$PATH\"} ")
    assert multi.command.endswith(
        "./.train.env /v/bin/python -m torch.distributed.run --nnodes 2 --nproc_per_node 8 --node_rank 1 "
        "--master_addr 10.0.0.5 --master_port 29501 --rdzv_conf timeout=600 --max_restarts 0 "
        "-m trainer.train cfg.json --run-dir '/r un' --stop-at-step 5"
    )
    # the environment goes through the env file, never on the line
    assert multi.env == {"GLOO_SOCKET_IFNAME": "eth1", "NCCL_SOCKET_IFNAME": "eth1", "OMP_NUM_THREADS": "1"}
    assert (multi.name, multi.env_file) == ("train", "/r un/.train.env")
    # one node: --standalone (a free port of its own); no sockets between machines to pin
    single = torchrun_command(
        python="/v/bin/python",
        nproc_per_node=2,
        config="/r/config.json",
        run_dir="/r",
        env={"K": "a b"},
        socket_ifname="eth1",
    )
    assert single.command.startswith("env -i ") and single.command.endswith(
        "./.train.env /v/bin/python -m torch.distributed.run --standalone "
        "--nproc_per_node=2 -m trainer.train /r/config.json --run-dir /r"
    )
    assert single.env == {"K": "a b"}
    for bad in ({"nnodes": 2, "node_rank": 2}, {"nnodes": 0}, {"nproc_per_node": 0}):
        with pytest.raises(ValueError):
            torchrun_command(**{"python": "p", "nproc_per_node": 1, "config": "c", "run_dir": "r", **bad})


@pytest.mark.usefixtures("client")
def test_two_nodes_train_as_one_ddp_group(provider, tmp_path):
    insts = [
        place(provider, name=f"ty-mn-{rank}", instance_types=["cpu_4x_general", "gpu_1x_a10"], timeout_s=10, poll_s=0.2)
        for rank in range(2)
    ]
    data = prepare_locally(tmp_path / "data")  # meanwhile the instances boot
    insts = [wait_active(provider, i.id) for i in insts]
    nodes = [provider.node(i) for i in insts]
    for node in nodes:
        node.wait_for_ssh(time.monotonic() + 15, interval_s=0.1)

    spec = BootstrapSpec(run_dir="runs/mn", python=NODE_PYTHON, torch_site_packages=TORCH_SITE, data_local_dir=data)
    wheels = WheelCache(tmp_path / "wheels")
    wheels.get()  # built once here, so the parallel bootstraps share it
    prepared = in_parallel(lambda node: bootstrap(node, spec, wheels=wheels), nodes)
    master = insts[0].private_ip
    assert master != insts[1].private_ip  # two machines, two addresses
    port = free_port()
    pids = []
    for rank, (node, p) in enumerate(zip(nodes, prepared, strict=True)):
        config = f"{p.run_dir}/train-config.json"
        node.write_json(config, {**TINY, "data_dir": p.data_dir})  # each node reads its own copy
        command = torchrun_command(
            python=p.python,
            nproc_per_node=1,
            config=config,
            run_dir=p.run_dir,
            env={"OMP_NUM_THREADS": "1"},
            nnodes=2,
            node_rank=rank,
            master_addr=master,
            master_port=port,
            socket_ifname="lo",
            rendezvous_timeout_s=120,
        )
        assert f"--master_addr {master} --master_port {port}" in command.command
        pids.append(command.start(node))

    def statuses():
        return [node.status(workdir=p.run_dir, name="train") for node, p in zip(nodes, prepared, strict=True)]

    # drop every SSH connection once training is under way: the trainers run on
    root, rank0 = prepared[0].run_dir, nodes[0]
    deadline = time.monotonic() + 120
    while not any(m["kind"] == "train" for m in metrics(rank0, root)):
        assert time.monotonic() < deadline, rank0.read_text(f"{root}/train.log")
        assert all(s.running for s in statuses()), [
            n.read_text(f"{p.run_dir}/train.log") for n, p in zip(nodes, prepared, strict=True)
        ]
        time.sleep(0.5)
    for node in nodes:
        node.close()
    assert all(s.running for s in statuses())  # reconnected; still training

    while any(s.running for s in statuses()):
        assert time.monotonic() < deadline, "training did not finish in time"
        time.sleep(0.5)
    found = statuses()
    logs = [n.read_text(f"{p.run_dir}/train.log") for n, p in zip(nodes, prepared, strict=True)]
    assert [s.exit_code for s in found] == [0, 0], logs

    lines = metrics(rank0, root)
    start = next(m for m in lines if m["kind"] == "start")
    assert start["world_size"] == 2 and start["tokens_per_step"] == 512
    assert lines[-1]["kind"] == "done" and lines[-1]["step"] == start["total_steps"] == 24
    latest = rank0.read_text(f"{root}/checkpoints/latest").strip()
    manifest = json.loads(rank0.read_text(f"{root}/checkpoints/{latest}/manifest.json"))
    assert manifest["step"] == 24 and "model.safetensors" in manifest["files"]
    assert rank0.exists(f"{root}/DONE")
    assert not nodes[1].exists(f"{prepared[1].run_dir}/metrics.jsonl")  # only rank 0 writes

    provider.terminate([i.id for i in insts])
    deadline = time.monotonic() + 10
    while any(provider.get(i.id).status is not InstanceStatus.terminated for i in insts):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)
    assert all(marked_pids(INSTANCE_ENV, i.id) == [] for i in insts)
