"""Anthropic Messages API (``POST /v1/messages``) with its streaming events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from apps.llm.backends.base import BackendCall, Completion, Delta, HTTPChatBackend, Usage, sse_data
from apps.llm.exceptions import LLMRateLimited, LLMUnavailable

ANTHROPIC_VERSION = "2023-06-01"
SUPPORTED_PARAMS = {"max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "metadata"}


class AnthropicBackend(HTTPChatBackend):
    """System messages become the ``system`` field; usage comes from
    ``message_start`` (input tokens) and ``message_delta`` (output tokens).

    OPTIONS: ``base_url``, ``api_key``, ``model``, ``headers``, ``version``.
    """

    gen_ai_provider = "anthropic"

    OPTIONS = {"base_url": "https://api.anthropic.com", "api_key": "", "model": "", "headers": {},
               "version": ANTHROPIC_VERSION}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._url = self.options["base_url"].rstrip("/") + "/v1/messages"
        self._headers = {"Content-Type": "application/json", "x-api-key": self.options["api_key"],
                         "anthropic-version": self.options["version"], **self.options["headers"]}

    def url(self) -> str:
        return self._url

    def headers(self) -> dict:
        return self._headers

    def body(self, call: BackendCall, *, stream: bool) -> dict:
        system = "\n\n".join(m["content"] for m in call.messages if m.get("role") == "system")
        messages = [{"role": m["role"], "content": m["content"]} for m in call.messages if m.get("role") != "system"]
        # Route params are OpenAI-style; pass only what the Messages API accepts.
        params = {k: v for k, v in call.params.items() if k in SUPPORTED_PARAMS}
        stop = call.params.get("stop")
        if stop:
            params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        body = {"model": call.model, "messages": messages, **params, "stream": stream}
        body.setdefault("max_tokens", 1024)  # required by the API
        if system:
            body["system"] = system
        return body

    async def stream(self, call: BackendCall) -> AsyncIterator[Delta | Usage]:
        usage = Usage()
        finished = False
        async with self.post(self.body(call, stream=True), call) as response:
            async for data in sse_data(response, self.alias):
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield Delta(delta["text"])
                elif kind == "message_start":
                    usage.prompt_tokens = int(((data.get("message") or {}).get("usage") or {}).get("input_tokens") or 0)
                elif kind == "message_delta":
                    usage.completion_tokens = int((data.get("usage") or {}).get("output_tokens") or 0)
                elif kind == "message_stop":
                    finished = True
                    break
                elif kind == "error":
                    error = data.get("error") or {}
                    cls = LLMRateLimited if error.get("type") == "rate_limit_error" else LLMUnavailable
                    raise cls(f"stream error: {error.get('type')}: {error.get('message', '')}", provider=self.alias)
        if not finished:
            raise LLMUnavailable("stream ended before message_stop", provider=self.alias)
        yield usage

    async def complete(self, call: BackendCall) -> Completion:
        async with self.post(self.body(call, stream=False), call) as response:
            try:
                data = await response.json(content_type=None)
                text = "".join(block.get("text", "") for block in data["content"] if block.get("type") == "text")
            except (ValueError, KeyError, TypeError) as exc:
                raise LLMUnavailable("malformed messages response", provider=self.alias) from exc
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            usage=Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)) if usage else None,
            finish_reason=data.get("stop_reason"),
        )
