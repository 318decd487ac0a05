"""What a plan assumes where nothing was measured: a memory model, published throughput, defaults.

Every figure here is a documented guess that a throughput record (a finished run or a probe on
the same instance type and model shape) replaces: measured rows take their tokens/s, micro-batch,
setup and evaluation times from the records (orchestrator.planning.plan).

**Memory model** (bytes per GPU, data parallel, AdamW): a fixed part, 16 bytes per parameter
(fp32 weights 4, gradients 4, AdamW's two moments 8) plus 1.5 GB of runtime (the CUDA context,
NCCL, DDP's gradient buckets, allocator slack); and the activations of each sample at `seq_len`:
the transformer's 34·C + 5·nh·T bytes per token per layer (Korthikanti et al. 2022, "Reducing
activation recomputation in large transformer models", 16-bit, nothing recomputed) plus the
logits, 16 bytes per token per vocabulary entry (the 16-bit logits, their fp32 copy for the loss,
and its gradient), times 1.44 (fp32 training: twice that). The factor 1.44 is fitted to the
micro-batches the seed user's out-of-memory binary search found for gpt2-small at seq 1024
(shared/reference/seed-facts.md): the model gives 13 on an A100 40GB (seed: 13), 27 on 80 GB
(seed: 27 on H100, 28 on A100 80GB) and 64 on a B200 (seed: 64); see tests/orchestrator/test_plan.py.
The seed's model materialised attention scores; trainer.model uses scaled_dot_product_attention,
which keeps fewer, so on our trainer the model errs on the safe side.

**Published throughput (the prior)**: the seed user's 8x A100 40GB run of gpt2-small at seq 1024
(`gpu_8x_a100`) trained at more than 226,000 tokens/s in all. With trainer.architecture's
FLOPs per token (8.55e8) and the GPU table's dense bf16 peak (312 TFLOP/s per A100) that is an
MFU of about 7.7% ("about 8%" in the seed facts). A prior row applies that MFU to its own GPUs'
peak. It was measured on one shape; other shapes (and other GPUs, which rarely keep the same MFU
on a model this small) only borrow it, which is why a prior's band is the widest.

**Bands** (the low/high US$ and hours around an estimate), by where the throughput comes from:
measured: the spread of the records used (the farthest of them from their median, relative),
at least ±10%; scaled (another type's MFU on this type's peak): ±25%; prior: ±40%.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from trainer.architecture import GPTConfig, flops_per_token, make_config
from trainer.gpus import gpu_for

# -- memory --------------------------------------------------------------------------------------
GB = 1e9
#: fp32 weights, fp32 gradients, AdamW's two fp32 moments
STATIC_BYTES_PER_PARAM = 16
#: CUDA context, NCCL, DDP's gradient buckets, allocator slack
RUNTIME_BYTES = 1.5 * GB
#: fitted to the seed user's micro-batches (module doc)
ACTIVATION_FACTOR = 1.44
#: 16-bit logits + their fp32 copy for the loss + its gradient, per token per vocabulary entry
LOGIT_BYTES = 16


def static_bytes(params: int) -> float:
    """Weights, gradients, optimizer states and the runtime: what one GPU holds before any sample."""
    return STATIC_BYTES_PER_PARAM * params + RUNTIME_BYTES


def activation_bytes_per_sample(cfg: GPTConfig, seq_len: int, precision: str) -> float:
    """What one sequence of `seq_len` tokens keeps for the backward pass (module doc)."""
    per_layer_per_token = 34 * cfg.n_embd + 5 * cfg.n_head * seq_len
    per_token = cfg.n_layer * per_layer_per_token + LOGIT_BYTES * cfg.vocab_size
    width = 2.0 if precision == "fp32" else 1.0
    return seq_len * per_token * ACTIVATION_FACTOR * width


def max_micro_batch(params: int, cfg: GPTConfig, seq_len: int, memory_gb: float, precision: str) -> int:
    """The largest micro-batch the memory model fits in `memory_gb` (0: not even one sample)."""
    free = memory_gb * GB - static_bytes(params)
    return max(0, int(free // activation_bytes_per_sample(cfg, seq_len, precision)))


def memory_needed_gb(params: int, cfg: GPTConfig, seq_len: int, micro_batch: int, precision: str) -> float:
    return (static_bytes(params) + micro_batch * activation_bytes_per_sample(cfg, seq_len, precision)) / GB


# -- the published prior -------------------------------------------------------------------------
@dataclass(frozen=True)
class Prior:
    mfu: float
    source: str


SEED_TOKENS_PER_S = 226_000
SEED_GPUS = 8
SEED_GPU = "A100 40GB"
SEED_SOURCE = (
    "seed user's 8x A100 40GB gpt2-small seq 1024 run: >226,000 tokens/s, ~8% MFU (shared/reference/seed-facts.md)"
)


@cache
def seed_prior() -> Prior:
    """The seed run's MFU, from its tokens/s, our FLOPs per token and the GPU table's peak."""
    a100 = gpu_for(SEED_GPU)
    assert a100 is not None, "trainer/gpus.json lost its A100 40GB"
    flops = flops_per_token(make_config("gpt2-small"), 1024) * SEED_TOKENS_PER_S
    return Prior(mfu=flops / (SEED_GPUS * a100.peak_bf16_flops), source=SEED_SOURCE)


# -- bands ---------------------------------------------------------------------------------------
#: records of a type, shape and node count that a measured row uses (the newest)
RECENT_RECORDS = 5
MEASURED_MIN_BAND = 0.10
SCALED_BAND = 0.25
PRIOR_BAND = 0.40

# -- times where nothing was measured ------------------------------------------------------------
#: launch to active on a rented machine: Lambda's docs say single-GPU instances usually take
#: 3-5 minutes, multi-GPU ones 10-15 (shared/reference/lambda-cloud-api.md, section 5)
BOOT_S_ONE_GPU = 240.0
BOOT_S_MULTI_GPU = 750.0
#: trainer wheel, venv, `import torch` check: seconds in benchmarks/provision, a minute to be safe
BOOTSTRAP_S = 60.0
#: the local provider: a directory and a process
LOCAL_SETUP_S = 30.0
#: tokenising the data set on the node, or pulling its cached shards from the store
DATA_TOKENS_PER_S = 5e6
#: evaluation runs forward only: about a third of a training step's FLOPs per token
EVAL_SPEEDUP = 3.0
#: instruction fine-tuning (a few epochs on ~1,000 items) and greedy answers to the test items
IFT_S = 900.0
