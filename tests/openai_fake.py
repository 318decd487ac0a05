"""A small OpenAI-compatible HTTP server for tests: POST /v1/chat/completions, real response shape.

It runs `http.server` in a thread on 127.0.0.1 and a free port, so code under test talks to it
through the real `openai` client. What it answers is scripted per test: `judge.reply` is a
function from the request body to a reply (text, or a `Reply` with a delay or an HTTP error).
It records every request (body and headers) so tests can assert how many calls were made and
what they held.

Helpers that read our comparative prompt back (reference answer, the answers by label) let a fake
judge score by answer *content*, which is what makes label mapping checkable.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    text: str = ""
    #: seconds to wait before answering (longer than the client's timeout: a timeout)
    delay_s: float = 0.0
    #: non-200: answer with an OpenAI-style error object instead
    status: int = 200
    error_message: str = "error"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Recorded:
    body: dict
    headers: dict[str, str]

    @property
    def messages(self) -> list[dict]:
        return self.body["messages"]

    @property
    def user_text(self) -> str:
        return next(m["content"] for m in self.messages if m["role"] == "user")


Responder = Callable[[dict], "str | Reply"]


@dataclass
class FakeOpenAI:
    reply: Responder = lambda _body: "50"
    requests: list[Recorded] = field(default_factory=list)
    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def record(self, body: dict, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(Recorded(body, headers))


def _completion(model: str, text: str, reply: Reply, body: dict) -> dict:
    prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
    pt = reply.prompt_tokens if reply.prompt_tokens is not None else max(1, prompt_chars // 4)
    ct = reply.completion_tokens if reply.completion_tokens is not None else max(1, len(text) // 4)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    }


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout) before we answered

        def do_POST(self) -> None:  # http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                return
            fake.record(body, {k.lower(): v for k, v in self.headers.items()})
            reply = fake.reply(body)
            if isinstance(reply, str):
                reply = Reply(text=reply)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if reply.status != 200:
                self._send(
                    reply.status,
                    {"error": {"message": reply.error_message, "type": "invalid_request_error", "code": None}},
                )
                return
            self._send(200, _completion(body.get("model", ""), reply.text, reply, body))

    return Handler


class FakeOpenAIServer:
    """Context manager: `with FakeOpenAIServer() as fake: ... fake.base_url ...`."""

    def __init__(self) -> None:
        self.fake = FakeOpenAI()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.fake))
        self._server.daemon_threads = True  # a delayed reply must not hold up shutdown
        self.fake.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self.fake

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- reading our comparative prompt back ------------------------------------------------------

_ANSWER = re.compile(r'<answer label="(Model \d+)">\n(.*?)\n</answer>', re.DOTALL)
_REFERENCE = re.compile(r"<reference_answer>\n(.*?)\n</reference_answer>", re.DOTALL)


def shown_answers(body: dict) -> dict[str, str]:
    """{"Model 1": answer text, ...} in the order shown."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return dict(_ANSWER.findall(user))


def reference(body: dict) -> str:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return _REFERENCE.search(user).group(1)


def score_by_content(body: dict, score_of: Callable[[str, str], float]) -> str:
    """A comparative JSON answer giving each label `score_of(answer, reference)`."""
    ref = reference(body)
    return json.dumps(
        {
            lab: {"score": score_of(text, ref), "comments": f"judged {text[:20]!r}"}
            for lab, text in shown_answers(body).items()
        }
    )
