"""GPT-2, as in Raschka's book (and nanoGPT), with attention through scaled_dot_product_attention.

Pre-LayerNorm blocks (eps 1e-5), learned absolute positions, tanh-GELU, 4x MLP. The book's
defaults are an untied output head and no QKV bias; both are options, so OpenAI's GPT-2 weights
(tied head, QKV bias) load into the same class. Module names follow Hugging Face's GPT-2 so that a
state dict maps across by name (only HF's Conv1D weights need a transpose).

Shapes: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size (C // nh), V vocab.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# the architecture's arithmetic is torch-free (the service sizes runs with it); re-exported here
from trainer.architecture import PRESETS as PRESETS
from trainer.architecture import GPTConfig as GPTConfig
from trainer.architecture import count_params as count_params
from trainer.architecture import flops_per_token as _flops_per_token
from trainer.architecture import make_config as make_config
from trainer.errors import CheckpointError


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.qkv_bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=1e-5),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) token ids -> logits (B, T, V); with targets (B, T), also the mean CE loss."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def num_params(self) -> int:
        """Parameter count; a tied head is counted once (parameters() deduplicates)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): trainer.architecture.flops_per_token."""
        return _flops_per_token(self.config, seq_len)


# ---- Hugging Face GPT-2 weights (model.safetensors + config.json, e.g. openai-community/gpt2) ----

_HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older exports


#: GPT-2 config fields that change the math, with the value our GPT computes. A folder whose
#: value differs is refused (HF's default stands in for a missing field): loading it anyway
#: would give wrong logits without a word (off by 0.17 to 1.6 for the first three).
_HF_SAME_AS_OURS = {
    "layer_norm_epsilon": 1e-5,  # our LayerNorms' eps
    "scale_attn_weights": True,  # scores / sqrt(head size)
    "scale_attn_by_inverse_layer_idx": False,  # no extra / (layer index + 1)
    "add_cross_attention": False,  # no encoder-decoder attention
}
#: tanh-GELU under both of HF's names
_HF_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
# Honoured as they are: n_positions (our context), tie_word_embeddings (our tie_weights), n_inner
# when it is 4 x n_embd, and reorder_and_upcast_attn, which only computes the same scores in fp32
# (our attention runs in fp32 already unless autocast is asked for). Dropouts do not apply in
# evaluation, and fine-tuning sets its own.


def _refuse(field: str, value: object, why: str) -> CheckpointError:
    return CheckpointError(f"Hugging Face config {field}={value!r} is not supported: {why}")


def config_from_hf(hf: dict) -> GPTConfig:
    """Our GPTConfig for a Hugging Face GPT-2 config.json; refuses (CheckpointError naming the
    field and its value) any setting our GPT does not compute."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise _refuse("model_type", hf.get("model_type"), "not a GPT-2")
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_GELU_TANH:
        raise _refuse("activation_function", act, f"our GPT-2 uses the tanh GELU ({' or '.join(_HF_GELU_TANH)})")
    for field, ours in _HF_SAME_AS_OURS.items():
        value = hf.get(field, ours)
        same = value == ours if isinstance(ours, float) else bool(value) is ours  # HF reads flags by truth
        if not same:
            raise _refuse(field, value, f"our GPT-2 computes {field}={ours!r}")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf["n_embd"]:
        raise _refuse("n_inner", n_inner, f"our MLP is 4 x n_embd = {4 * hf['n_embd']} wide")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=0.0,
        qkv_bias=True,  # HF's Conv1D always has a bias
        tie_weights=hf.get("tie_word_embeddings", True),
    )


def load_hf_state_dict(model: GPT, hf_sd: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face GPT-2 state dict into our model; every parameter must be covered."""
    ours = model.state_dict()
    seen = set()
    for key, tensor in hf_sd.items():
        name = key.removeprefix("transformer.")
        if name.endswith(_HF_BUFFERS):
            continue
        if name != "lm_head.weight":
            name = "transformer." + name
        if name not in ours:
            raise CheckpointError(f"Hugging Face weight {key!r} has no counterpart in our GPT-2")
        if name.endswith(_HF_TRANSPOSED):
            tensor = tensor.t()  # HF Conv1D stores (in, out); nn.Linear wants (out, in)
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise CheckpointError(f"{key}: shape {tuple(tensor.shape)} does not fit ours {tuple(ours[name].shape)}")
        with torch.no_grad():
            ours[name].copy_(tensor)
        seen.add(name)
    if model.config.tie_weights:
        seen.add("lm_head.weight")  # the same tensor as wte
        if "transformer.wte.weight" in seen:
            seen.add("transformer.wte.weight")
    missing = sorted(set(ours) - seen)
    if missing:
        raise CheckpointError(f"Hugging Face weights lack {', '.join(missing[:5])}")


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face GPT2LMHeadModel names (Conv1D layout)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(_HF_TRANSPOSED):
            tensor = tensor.t()
        out[name] = tensor.contiguous()
    return out


def from_hf_pretrained(folder: str | Path) -> GPT:
    """Build our GPT from a Hugging Face folder (config.json + model.safetensors)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for f in ("config.json", "model.safetensors"):
        if not (folder / f).is_file():
            raise CheckpointError(f"{folder} is not a Hugging Face GPT-2 folder: {f} is missing")
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    model = GPT(cfg)
    load_hf_state_dict(model, load_file(str(folder / "model.safetensors")))
    return model
