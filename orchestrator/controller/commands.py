"""The shell commands that drive the trainer on a node (docs/trainer-contract.md), and what the
controller reads back from a `Node`. Nothing here imports torch: the trainer only ever runs as a subprocess.

Each program is a provision.launch.Launch: `.start(node)` runs it with an allow-listed environment
plus the run's own (`env`: PYTHONPATH, settings.node_env, the store's credentials file), which
goes through a mode-600 file in the run directory, never on the command line.

Layout of an instance's working directory (RUN_DIR, the trainer's `--run-dir`):

    RUN_DIR/data/            python -m trainer.prepare output (manifest.json written last)
    RUN_DIR/config.json      the train config, from the run spec
    RUN_DIR/prepare.*        log, pid and exit code of the data preparation
    RUN_DIR/train.*          ... of torchrun + trainer.train (metrics.jsonl, checkpoints/, DONE)
    RUN_DIR/STOP             written by the controller: the trainer stops gracefully (budget.py)
    RUN_DIR/eval.*           ... of trainer.evaluate; its result in eval.json
    RUN_DIR/ift.*            ... of trainer.ift; its answers.json and ift.json in ift/
    RUN_DIR/.NAME.env        a process's environment until its shell has read it (launch.py)
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.controller.policy import one_line
from orchestrator.spec import RunSpec
from provision.launch import DEFAULT_MASTER_PORT, Launch, torchrun_command
from provision.node import Node, ProcessStatus

DATA = "data"
CONFIG = "config.json"
EVAL_OUT = "eval.json"
IFT_OUT = "ift"
#: the control file that asks the trainer to checkpoint and stop (trainer.control)
STOP = "STOP"
_RANK_PREFIX = re.compile(r"^\[(?:default)?rank\d+\]:\s?")


def path(workdir: str, *parts: str) -> str:
    return "/".join([workdir.rstrip("/"), *parts])


def prepare_args(spec: RunSpec, cache_uri: str | None = None) -> list[str]:
    """trainer.prepare's options for the spec's data (and the store folder that caches it)."""
    d = spec.data
    args = ["--format", d.format, "--val-fraction", str(d.val_fraction), "--test-fraction", str(d.test_fraction)]
    if d.max_tokens is not None:
        args += ["--max-tokens", str(d.max_tokens)]
    if cache_uri is not None:
        args += ["--cache", cache_uri]
    return args


def prepare_command(
    python: str, env: Mapping[str, str], spec: RunSpec, workdir: str, cache_uri: str | None = None
) -> Launch:
    args = (
        python,
        "-m",
        "trainer.prepare",
        "--source",
        spec.data.source,
        "--out",
        path(workdir, DATA),
        *prepare_args(spec, cache_uri),
    )
    return Launch("prepare", workdir, args, env)


def train_command(
    python: str,
    env: Mapping[str, str],
    spec: RunSpec,
    workdir: str,
    *,
    node_rank: int,
    master_addr: str | None,
    master_port: int = DEFAULT_MASTER_PORT,
    socket_ifname: str | None = None,
    resume_from: str | None = None,
) -> Launch:
    """torchrun + trainer.train on one node of the run (provision.launch explains the rendezvous);
    `resume_from`: a stored checkpoint's URI that rank 0 pulls first when the run directory has no
    newer one (a replaced node has none)."""
    c = spec.compute
    return torchrun_command(
        python=python,
        nproc_per_node=c.procs_per_node,
        config=path(workdir, CONFIG),
        run_dir=workdir,
        train_args=["--resume-from", resume_from] if resume_from else [],
        env=env,
        nnodes=c.nodes,
        node_rank=node_rank,
        master_addr=master_addr or "127.0.0.1",
        master_port=master_port,
        socket_ifname=socket_ifname,
    )


def eval_command(
    python: str, env: Mapping[str, str], spec: RunSpec, workdir: str, *, checkpoint: str | None, test_sha256: str | None
) -> Launch:
    """trainer.evaluate on a committed checkpoint (its folder name), or with `checkpoint` None on
    OpenAI's weights for a pretrained run (`hf:NAME`, spec.model.pretrained)."""
    model = path(workdir, "checkpoints", checkpoint) if checkpoint is not None else f"hf:{spec.model.pretrained}"
    args = [
        python,
        "-m",
        "trainer.evaluate",
        model,
        "--test-set",
        path(workdir, DATA),
        "--out",
        path(workdir, EVAL_OUT),
    ]
    if test_sha256:
        args += ["--expect-sha256", test_sha256]
    if spec.evaluation.test_max_tokens is not None:
        args += ["--max-tokens", str(spec.evaluation.test_max_tokens)]
    return Launch("eval", workdir, tuple(args), env)


def ift_command(
    python: str, env: Mapping[str, str], spec: RunSpec, workdir: str, *, model: str, store: str | None = None
) -> Launch:
    """trainer.ift on `model` (a checkpoint folder on the node, or `hf:NAME`) with the spec's
    evaluation.ift settings, writing answers.json, ift.json and the fine-tuned checkpoint into
    RUN_DIR/ift/; `store`: the folder it uploads that checkpoint to."""
    i = spec.evaluation.ift
    args = [
        python,
        "-m",
        "trainer.ift",
        model,
        "--data",
        i.data,
        "--out",
        path(workdir, IFT_OUT),
        "--epochs-max",
        str(i.epochs_max),
        "--patience",
        str(i.patience),
        "--batch-size",
        str(i.batch_size),
        "--lr",
        str(i.lr),
        "--max-new-tokens",
        str(i.max_new_tokens),
        "--seed",
        str(i.seed),
    ]
    if i.limit_test is not None:
        args += ["--limit-test", str(i.limit_test)]
    if store is not None:
        args += ["--store", store]
    return Launch("ift", workdir, tuple(args), env)


def trainer_config(spec: RunSpec, workdir: str, checkpoints_uri: str | None = None) -> dict:
    """The train config; `checkpoints_uri`: the store folder rank 0 uploads each committed
    checkpoint to while it trains."""
    return spec.trainer_config(data_dir=path(workdir, DATA), artifact_uri=checkpoints_uri)


# -- node helpers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    """A detached process as the node shows it: never started, running, or ended (code or None)."""

    started: bool
    status: ProcessStatus | None = None

    @property
    def running(self) -> bool:
        return bool(self.status and self.status.running)

    @property
    def exit_code(self) -> int | None:
        return self.status.exit_code if self.status else None

    @property
    def ended(self) -> bool:
        return self.started and not self.running


def proc_state(node: Node, workdir: str, name: str) -> Proc:
    """The pid file is the record that a process was started: it is written by the same shell
    command that starts it, so a restarted controller never starts a second one."""
    if not node.exists(path(workdir, f"{name}.pid")):
        return Proc(started=False)
    return Proc(started=True, status=node.status(workdir=workdir, name=name))


#: how much of a process's log the service keeps when the process ends (the end says why)
LOG_TAIL_BYTES = 65536


def log_tail(node: Node, workdir: str, name: str) -> str:
    """The last LOG_TAIL_BYTES of a log in the run directory ('' if there is none)."""
    return node.run(f"tail -c {LOG_TAIL_BYTES} {shlex.quote(path(workdir, name))} 2>/dev/null", check=False).replace(
        "\x00", ""
    )


def trainer_failure(node: Node, workdir: str) -> str | None:
    """The trainer's own account of why it failed (RUN_DIR/FAILED, written by rank 0), if any.

    Under torchrun the exit code is 1 whatever went wrong, so this file is the only way to tell
    a bad config (ConfigError, exit 2) from a crash."""
    failed = node.read_json(path(workdir, "FAILED"))
    if not failed or not str(failed.get("error") or "").strip():
        return None
    error = one_line(str(failed["error"]))
    kind = str(failed.get("kind") or "")
    if kind in ("ConfigError", "DataError", "CheckpointError") or not kind:
        return f"training failed: {error}"
    return f"training failed ({kind}): {error}"


def failure_reason(node: Node, log_file: str, what: str, exit_code: int | None) -> str:
    """One line a user can act on: the trainer's `error: ...` line if it printed one, else the
    last line of its log, else the exit code."""
    tail = node.run(f"tail -c 16384 {shlex.quote(log_file)} 2>/dev/null", check=False)
    # torchrun prefixes a worker's lines with "[rankN]:"; the trainer's own line is "error: ..."
    lines = [_RANK_PREFIX.sub("", ln).strip() for ln in tail.splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("error:")]
    how = f"exit code {exit_code}" if exit_code is not None else "killed (no exit code)"
    if errors:
        return f"{what} failed: {errors[-1].removeprefix('error:').strip()}"
    if lines:
        return f"{what} failed ({how}): {lines[-1][:500]}"
    return f"{what} failed ({how}) with an empty log"


#: what a prepare's `"cache"` outcome means, as a run event
CACHE_MESSAGES = {
    "hit": "the prepared data came from the store's data cache (nothing was tokenised again)",
    "miss": "the data was prepared from its source and stored in the data cache for later runs",
    "off": "the data was prepared from its source (no data cache)",
}


def cache_outcome(prepare_output: str) -> str | None:
    """ "hit", "miss" or "off" from trainer.prepare's JSON summary line; None if it printed none."""
    for line in reversed(prepare_output.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and '"cache"' in line):
            continue
        try:
            value = json.loads(line).get("cache")
        except (json.JSONDecodeError, AttributeError):
            continue
        return str(value) if value is not None else None
    return None
