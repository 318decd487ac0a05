"""The model: the book's parameter counts, and OpenAI/Hugging Face GPT-2 weights load exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainer.errors import CheckpointError
from trainer.model import GPT, count_params, from_hf_pretrained, make_config, to_hf_state_dict


def test_gpt2_small_has_the_books_parameter_count():
    with torch.device("meta"):  # no memory for 163M weights
        untied = GPT(make_config("gpt2-small"))
        tied = GPT(make_config("gpt2-small", {"tie_weights": True}))
    assert untied.num_params() == 163_009_536
    assert tied.num_params() == 124_412_160
    assert count_params(make_config("gpt2-small")) == 163_009_536
    assert count_params(make_config("gpt2-medium", {"tie_weights": True, "qkv_bias": True})) == 354_823_168


def test_options_change_the_model():
    base = GPT(make_config("gpt2-tiny", {"n_layer": 1}))
    biased = GPT(make_config("gpt2-tiny", {"n_layer": 1, "qkv_bias": True}))
    tied = GPT(make_config("gpt2-tiny", {"n_layer": 1, "tie_weights": True}))
    assert biased.transformer.h[0].attn.c_attn.bias is not None
    assert base.transformer.h[0].attn.c_attn.bias is None
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert base.num_params() - tied.num_params() == 50257 * 128


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    m = GPT(make_config("gpt2-tiny", {"n_layer": 1, "dropout": 0.5}))
    x = torch.randint(0, 50257, (2, 16))
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


def test_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    m = GPT(make_config("gpt2-tiny", {"n_layer": 2}))
    x = torch.randint(0, 50257, (2, 32))
    _, loss = m(x, x)
    assert abs(loss.item() - torch.log(torch.tensor(50257.0)).item()) < 0.2


@pytest.fixture()
def hf_folder(tmp_path):
    """A random-init Hugging Face GPT-2 saved the way openai-community/gpt2 is (safetensors)."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path, hf


def test_hf_weights_give_the_same_logits_as_transformers(hf_folder):
    folder, hf = hf_folder
    ours = from_hf_pretrained(folder).eval()
    assert ours.config.tie_weights and ours.config.qkv_bias
    x = torch.randint(0, 50257, (3, 64))
    with torch.no_grad():
        want = hf(x).logits
        got, _ = ours(x)
    assert got.shape == want.shape == (3, 64, 50257)
    assert (got - want).abs().max().item() < 1e-4


def test_export_to_hf_round_trips(hf_folder):
    folder, hf = hf_folder
    ours = from_hf_pretrained(folder).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))  # make it differ from what was loaded
    target = GPT2LMHeadModel(hf.config).eval()
    target.load_state_dict(to_hf_state_dict(ours), strict=False)
    x = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        assert (target(x).logits - ours(x)[0]).abs().max().item() < 1e-4


def test_hf_folder_without_weights_is_refused(hf_folder):
    folder, _ = hf_folder
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        from_hf_pretrained(folder)


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
    """A 1-layer, 32-wide Hugging Face GPT-2 (vocabulary 512) whose config.json the tests vary."""
    folder = tmp_path_factory.mktemp("hf-tiny")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        folder, safe_serialization=True
    )
    return folder


def _variant(base, tmp_path, **changes):
    """A copy of `base` with config.json fields changed."""
    import json
    import shutil

    folder = tmp_path / "variant"
    shutil.copytree(base, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))
    return folder


@pytest.mark.parametrize(
    "field, value",
    [
        ("layer_norm_epsilon", 1e-3),
        ("scale_attn_weights", False),
        ("scale_attn_by_inverse_layer_idx", True),
        ("activation_function", "relu"),
        ("activation_function", "gelu"),  # the exact GELU, not GPT-2's tanh approximation
        ("n_inner", 64),
        ("add_cross_attention", True),
    ],
)
def test_hf_config_fields_that_change_the_math_are_refused_by_name(hf_tiny, tmp_path, field, value):
    folder = _variant(hf_tiny, tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=f"config {field}={value!r} is not supported: "):
        from_hf_pretrained(folder)


@pytest.mark.parametrize(
    "changes",
    [
        {"reorder_and_upcast_attn": True},  # the same scores, computed in fp32
        {"activation_function": "gelu_pytorch_tanh", "n_inner": 128, "layer_norm_epsilon": 1e-5},
    ],
)
def test_hf_config_fields_we_honour_give_transformers_logits(hf_tiny, tmp_path, changes):
    folder = _variant(hf_tiny, tmp_path, **changes)
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    ours = from_hf_pretrained(folder).eval()
    x = torch.randint(0, 512, (2, 32))
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max().item() < 1e-4
