"""The judge's one network call, through the real `openai` client.

The service makes this call itself (the API key never goes to a node). The client's own retries
cover timeouts, connection errors, 429 and 5xx (with its backoff); what still fails comes back as
a `CallFailed` whose message has the key scrubbed out, because error text ends up in stored rows
and logs and an OpenAI-compatible server may echo a request header back in its error body.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from orchestrator.settings import Settings

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int


class CallFailed(Exception):
    """The call got no usable HTTP answer (after the client's retries)."""


class JudgeClient:
    """A chat-completions caller, temperature 0, safe to share between threads (openai's client
    is). `complete` returns the answer text and token usage or raises CallFailed."""

    def __init__(
        self, *, api_key: str, model: str, base_url: str | None = None, timeout_s: float = 120.0, max_retries: int = 2
    ):
        # imported here, not at the top: `openai` takes ~0.5 s to import, and every start of the
        # service (the container's time to healthy) would pay it though most never judge
        import openai

        self.model = model
        self._secret = api_key
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)
        # Servers that do not know `response_format` answer 400 to it; after the first such
        # answer we stop sending it (the prompt asks for JSON anyway, and answers are validated).
        self._json_mode = True
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, api_key: str) -> JudgeClient:
        return cls(
            api_key=api_key,
            model=settings.judge_model,
            base_url=settings.judge_base_url,
            timeout_s=settings.judge_timeout_s,
            max_retries=settings.judge_max_retries,
        )

    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text

    def complete(self, messages: list[dict[str, str]], *, json_object: bool = False) -> Completion:
        import openai  # already loaded by __init__

        use_json = json_object and self._json_mode
        try:
            return self._create(messages, use_json)
        except openai.BadRequestError as exc:
            if not use_json:
                raise CallFailed(self._describe(exc)) from None
            log.info("judge server refused response_format; asking for JSON in the prompt only")
            with self._lock:
                self._json_mode = False
            try:
                return self._create(messages, False)
            except openai.OpenAIError as exc2:
                raise CallFailed(self._describe(exc2)) from None
        except openai.OpenAIError as exc:
            raise CallFailed(self._describe(exc)) from None

    def _create(self, messages: list[dict[str, str]], json_object: bool) -> Completion:
        # the judge's messages are plain {"role", "content"} dicts: what the API takes
        api_messages = cast("list[ChatCompletionMessageParam]", messages)
        if json_object:
            resp = self._client.chat.completions.create(
                model=self.model, messages=api_messages, temperature=0, response_format={"type": "json_object"}
            )
        else:
            resp = self._client.chat.completions.create(model=self.model, messages=api_messages, temperature=0)
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        usage = resp.usage
        return Completion(
            # a server that echoes the request back must not get the key into the cache
            text=self.scrub(text),
            input_tokens=int(usage.prompt_tokens) if usage else 0,
            output_tokens=int(usage.completion_tokens) if usage else 0,
        )

    def close(self) -> None:
        self._client.close()

    def _describe(self, exc: Exception) -> str:
        # `from None` above and a scrubbed message: the traceback chain of an openai error can
        # carry the request (headers included) into a log handler.
        return self.scrub(f"{type(exc).__name__}: {exc}")[:1000]
