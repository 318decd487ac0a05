"""GPT-2's architecture as numbers: the config, the book's presets, parameters and FLOPs per token.

Torch-free on purpose: the service (orchestrator.planning) sizes runs with the same arithmetic the
trainer uses (the chinchilla budget, MFU), and the service never imports torch. trainer.model
builds the network from these configs; trainer.config checks a train config against them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from trainer.errors import ConfigError


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # context length
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.1
    qkv_bias: bool = False
    tie_weights: bool = False


#: `max_tokens: chinchilla`: Hoffmann et al.'s compute-optimal budget, 20 tokens per parameter
CHINCHILLA_TOKENS_PER_PARAM = 20


# The book's GPT-2 configurations: untied head, no QKV bias, dropout 0.1.
PRESETS: dict[str, dict[str, Any]] = {
    # a few M parameters outside the embeddings: for CPU demos and tests
    "gpt2-tiny": dict(block_size=256, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "gpt2-small": dict(block_size=1024, n_layer=12, n_head=12, n_embd=768),  # 163,009,536 params
    "gpt2-medium": dict(block_size=1024, n_layer=24, n_head=16, n_embd=1024),
}


def make_config(preset: str, overrides: dict[str, Any] | None = None) -> GPTConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name: f.type for f in fields(GPTConfig)}
    merged = dict(PRESETS[preset])
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown key model_overrides.{key}; known: {', '.join(known)}")
        want = {"int": int, "float": float, "bool": bool}[str(known[key])]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"model_overrides.{key} must be {known[key]}, got {value!r}")
        merged[key] = value
    cfg = GPTConfig(**merged)
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    return cfg


def count_params(cfg: GPTConfig) -> int:
    """Parameters of a config without building it (the chinchilla budget needs it early); a tied
    head is counted once, as GPT.num_params counts it."""
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    block = (C * 3 * C + (3 * C if cfg.qkv_bias else 0)) + (C * C + C)  # attention
    block += (C * 4 * C + 4 * C) + (4 * C * C + C) + 4 * C  # MLP + two LayerNorms
    head = 0 if cfg.tie_weights else V * C
    return V * C + cfg.block_size * C + L * block + 2 * C + head


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B style.

    6 x the weights that take part in a matmul (everything but the embeddings, plus the output
    head, which is a matmul even when tied) + the attention scores and values term 12·L·C·T.
    """
    n = count_params(cfg) - cfg.block_size * cfg.n_embd
    if not cfg.tie_weights:
        # the token lookup is not a matmul; a tied matrix is counted once, for the head
        n -= cfg.vocab_size * cfg.n_embd
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * seq_len
