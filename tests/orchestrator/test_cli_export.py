"""`trainyard export` against a real service (`serve --no-controller` on SQLite): a finished run's
checkpoint, stored in the embedded file:// store as the trainer's upload leaves it, comes back as a
Hugging Face folder that the real transformers loads with our logits, and its model card carries
the run's data, tokens, test loss, IFT score and cost as the API reports them."""

from __future__ import annotations

import pytest
import torch

from orchestrator.db.models import Checkpoint, Comparison, ComparisonRequest, Evaluation, Run, utcnow
from orchestrator.db.session import transaction
from orchestrator_helpers import api_service, tiny_spec
from trainer import checkpoint
from trainer.artifacts import open_store
from trainer.model import GPT, GPTConfig


def _store_checkpoint(svc, run_id: str, tmp_path) -> tuple[GPT, str]:
    """A committed step-40 checkpoint of the book's architecture (untied head, no QKV bias),
    uploaded where the service keeps the run's checkpoints; returns the model and the URI."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = GPT(cfg).eval()
    opt = torch.optim.AdamW(model.parameters())
    config = {"model": vars(cfg), "train": {"seq_len": 16}}
    local, _ = checkpoint.save(tmp_path / "node", 40, 20480, model, opt, {"step": 40}, config, {"val_loss": 5.0}, 1)
    store_uri = (svc.data_dir / "artifacts" / "runs" / run_id / "checkpoints").as_uri()
    open_store(store_uri).put_checkpoint(local, local.name)
    return model, f"{store_uri}/{local.name}"


def _judged(s, run_id: str) -> None:
    """A succeeded comparison in which the judge scored the run's IFT answers 61.5 (55 to 68)."""
    version = {"mode": "pointwise", "model": "judge", "template_hash": "t", "item_set_hash": "i", "k": 1, "seed": 0}
    score = {"model": "export-me", "run_id": run_id, "mean": 61.5, "ci_low": 55.0, "ci_high": 68.0}
    score |= {"n_items_scored": 10, "n_expected": 10, "n_missing": 0}
    usage = {"calls_made": 10, "calls_cached": 0, "cost_cents": 1.0}
    s.add(
        Comparison(
            id="rep-1",
            mode="pointwise",
            judge_model="judge",
            judge_version=version,
            models=["export-me"],
            report={"models": [score], "usage": usage, "judge": version},
        )
    )
    s.flush()
    s.add(
        ComparisonRequest(
            id="cmp-1",
            status="succeeded",
            mode="pointwise",
            k=1,
            seed=0,
            models=[{"label": "export-me", "run_id": run_id, "baseline": None}],
            report_id="rep-1",
        )
    )


def test_export_gives_a_folder_transformers_loads_with_the_runs_facts_on_its_card(tmp_path):
    transformers = pytest.importorskip("transformers")
    svc = api_service(tmp_path / "data")
    try:
        run_id = svc.submit(tiny_spec("export-me"))
        model, uri = _store_checkpoint(svc, run_id, tmp_path)
        with transaction(svc.db) as s:
            s.get(Run, run_id).status = "succeeded"
            ckpt = Checkpoint(run_id=run_id, step=40, tokens=20480, val_loss=5.0, uri=uri, state="stored")
            s.add(ckpt)
            s.flush()
            s.add(Evaluation(run_id=run_id, checkpoint_id=ckpt.id, kind="test_loss", test_loss=4.75, bits_per_byte=1.6))
            _judged(s, run_id)
            ckpt.stored_at = utcnow()

        done = svc.cli("export", run_id, "--format", "hf", "--out", str(tmp_path / "hf"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(tmp_path / "hf")
        assert "exported the checkpoint of step 40" in done.stderr
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        x = torch.randint(0, 50257, (2, 32))
        with torch.no_grad():
            assert (model(x)[0] - hf(x).logits).abs().max().item() < 1e-4
        card = (tmp_path / "hf" / "README.md").read_text()
        for fact in (
            f"| run | {run_id} (export-me) |",
            "| training data | `builtin:corpus` |",
            "| tokens trained | 20,480 |",
            "| test loss | 4.7500 nats, 1.6000 bits per byte |",
            "| IFT score | 61.5 / 100 (95% CI 55.0 to 68.0): the LLM judge's score of the run's "
            "instruction-fine-tuned answers in comparison cmp-1 |",
            "| cost | US$",
        ):
            assert fact in card, fact
        assert not list(tmp_path.glob(".export-*")) and not list(tmp_path.glob(".tmp-*"))

        gone = svc.cli("export", run_id, "8", "--out", str(tmp_path / "none"), cwd=tmp_path)
        assert gone.returncode == 3 and gone.stderr.strip() == f"error: run {run_id} has no checkpoint of step 8"
    finally:
        svc.close()
