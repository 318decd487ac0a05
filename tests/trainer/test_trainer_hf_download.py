"""`hf:gpt2` without --hf-dir: config.json + model.safetensors fetched from HF_ENDPOINT (here a
loopback HTTP server laid out like the Hub, redirect and X-Linked-Etag included) into
TRAINYARD_HF_CACHE, reused without a request, and never used when a download was cut short."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from trainer import hf_download
from trainer.errors import CheckpointError
from trainer.evaluate import load_model

REPO_PATH = "/openai-community/gpt2/resolve/main/"


class Hub:
    """A Hub look-alike: config.json served directly; model.safetensors answered with a 302 to
    /cdn/... carrying X-Linked-Etag (its SHA-256), as huggingface.co does for large files.
    `mode`: "ok", "cut" (half the announced bytes, then close), "corrupt" (one byte flipped)."""

    def __init__(self, folder: Path):
        self.files = {name: (folder / name).read_bytes() for name in hf_download.FILES}
        self.requests: list[str] = []
        self.mode = "ok"
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.requests.append(self.path)
                name = self.path.rpartition("/")[2]
                if self.path == REPO_PATH + "model.safetensors":
                    sha = hashlib.sha256(hub.files[name]).hexdigest()
                    self.send_response(302)
                    self.send_header("Location", "/cdn/model.safetensors")
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path not in (REPO_PATH + "config.json", "/cdn/model.safetensors"):
                    self.send_error(404)
                    return
                body = hub.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if hub.mode == "cut" and name == "model.safetensors":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if hub.mode == "corrupt" and name == "model.safetensors":
                    body = bytearray(body)
                    body[len(body) // 2] ^= 0xFF
                self.wfile.write(bytes(body))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A tiny GPT-2 in Hugging Face's format (what openai-community/gpt2 holds, only smaller)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, n_positions=64)).eval()
    folder = tmp_path_factory.mktemp("hf-gpt2")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture()
def hub(hf_model, tmp_path, monkeypatch):
    server = Hub(hf_model[1])
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("TRAINYARD_HF_CACHE", str(tmp_path / "hf-cache"))
    yield server
    server.close()


def test_hf_gpt2_is_downloaded_once_then_loaded_from_the_cache(hub, hf_model, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_download, "_PROGRESS_MIN_BYTES", 1 << 20)  # show progress for 6.5 MB
    lines: list[str] = []
    monkeypatch.setattr(hf_download, "fetch_repo", _with_log(hf_download.fetch_repo, lines.append))
    model, info = load_model("hf:gpt2", None)
    # no training window recorded: an hf: model is scored at its context
    assert info == {"checkpoint": "hf:gpt2", "step": None, "train_seq_len": None}
    assert sorted(hub.requests) == sorted(
        [REPO_PATH + "config.json", REPO_PATH + "model.safetensors", "/cdn/model.safetensors"]
    )
    cached = tmp_path / "hf-cache" / "openai-community" / "gpt2"
    for name in hf_download.FILES:
        assert (cached / name).read_bytes() == (hf_model[1] / name).read_bytes()
    assert not list(cached.glob("*.part"))
    assert lines and lines[-1].startswith("download model.safetensors: 6.5/6.5 MB (100%")
    # the downloaded weights are OpenAI's model as transformers runs it
    x = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x)[0], hf_model[0](x).logits, atol=1e-4)

    hub.requests.clear()
    again, _ = load_model("hf:gpt2", None)
    assert hub.requests == []  # served from the cache, not a single request
    with torch.no_grad():
        assert torch.equal(again.eval()(x)[0], model(x)[0])


def _with_log(fetch, log):
    return lambda repo, *a, **kw: fetch(repo, *a, log=log, **kw)


@pytest.mark.parametrize(
    "mode, message",
    [("cut", r"the connection ended after \d+ of \d+ bytes"), ("corrupt", "the server announced")],
    ids=["cut", "corrupt"],
)
def test_a_cut_or_corrupt_download_is_never_used(hub, tmp_path, mode, message):
    hub.mode = mode
    with pytest.raises(hf_download.DownloadError, match=message) as e:
        load_model("hf:gpt2", None)
    assert e.value.exit_code == 1
    cached = tmp_path / "hf-cache" / "openai-community" / "gpt2"
    assert (cached / "config.json").is_file()  # it came whole
    assert sorted(p.name for p in cached.iterdir() if not p.name.endswith(".lock")) == ["config.json"]
    hub.mode, hub.requests[:] = "ok", []
    model, _ = load_model("hf:gpt2", None)  # the next call fetches only what is missing
    assert hub.requests == [REPO_PATH + "model.safetensors", "/cdn/model.safetensors"]
    assert model.config.n_layer == 1


@pytest.mark.usefixtures("hub")
def test_missing_file_and_silent_server_fail_with_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=r"/gpt2/resolve/main/tokenizer.json: HTTP 404"):
        hf_download.fetch_repo("openai-community/gpt2", files=("tokenizer.json",))
    with pytest.raises(CheckpointError, match="unknown Hugging Face model 'gpt3'"):
        load_model("hf:gpt3", None)
    # a server that accepts the connection and never answers: the read times out
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(hf_download.DownloadError, match="timed out"):
            hf_download.fetch_repo("openai-community/gpt2", timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()
    assert not (tmp_path / "hf-cache" / "openai-community" / "gpt2" / "config.json").exists()
