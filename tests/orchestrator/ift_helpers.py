"""Test helpers for IFT and comparisons: instruction data, a tiny GPT-2 in Hugging Face's format,
and a loopback server laid out like the Hub, so `hf:gpt2` baselines run for real on CPU.

The weights are a real GPT2LMHeadModel (transformers) cut down to one layer 32 wide, with GPT-2's
vocabulary: the trainer loads and converts them as it would OpenAI's. The server answers
`GET /openai-community/<name>/resolve/main/{config.json,model.safetensors}`, the paths the
trainer's downloader asks `HF_ENDPOINT` for, and records the paths asked.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

HF_NAMES = ("gpt2", "gpt2-medium")


def instruction_data(n: int) -> list[dict]:
    """`n` Alpaca-format items, every other one with an input."""
    colours = ("red", "green", "blue", "yellow", "white")
    items = []
    for i in range(n):
        colour = colours[i % len(colours)]
        if i % 2:
            items.append(
                {"instruction": f"Name the colour of item {i}.", "input": "", "output": f"Item {i} is {colour}."}
            )
        else:
            items.append(
                {
                    "instruction": "Rewrite the sentence in the past tense.",
                    "input": f"Item {i} is {colour}.",
                    "output": f"Item {i} was {colour}.",
                }
            )
    return items


def write_instruction_data(path: Path, n: int = 40) -> Path:
    path.write_text(json.dumps(instruction_data(n), indent=1))
    return path


def write_tiny_gpt2(folder: Path) -> Path:
    """A one-layer GPT-2 (vocabulary 50257, context 128) as config.json + model.safetensors."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, n_positions=128)
    GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def fill_hf_cache(cache: Path, weights: Path) -> Path:
    """A TRAINYARD_HF_CACHE holding `weights` for every name: the trainer uses it without a request."""
    for name in HF_NAMES:
        folder = cache / "openai-community" / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            (folder / f).write_bytes((weights / f).read_bytes())
    return cache


class HubServer:
    """`with HubServer(weights) as hub:` serves `weights` as every GPT-2 at hub.url (HF_ENDPOINT)."""

    def __init__(self, weights: Path):
        self.files = {f: (weights / f).read_bytes() for f in ("config.json", "model.safetensors")}
        self.requests: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # http.server's naming
                hub.requests.append(self.path)
                parts = self.path.strip("/").split("/")
                # openai-community/<name>/resolve/main/<file>
                if (
                    len(parts) != 5
                    or parts[0] != "openai-community"
                    or parts[1] not in HF_NAMES
                    or parts[2:4] != ["resolve", "main"]
                    or parts[4] not in hub.files
                ):
                    self.send_error(404)
                    return
                body = hub.files[parts[4]]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
