"""OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, llama.cpp server, LM Studio ...)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from apps.llm.backends.base import BackendCall, Completion, Delta, HTTPChatBackend, Usage, sse_data
from apps.llm.exceptions import LLMUnavailable


class OpenAIChatBackend(HTTPChatBackend):
    """``POST {base_url}/chat/completions``; streaming SSE parsed line by line.

    OPTIONS: ``base_url`` (ending in ``/v1``), ``api_key``, ``model``, ``headers``
    (extra HTTP headers), ``stream_usage`` (send ``stream_options.include_usage``
    so usage comes in the stream's last chunk; turn off for servers that reject it),
    ``max_tokens_param`` (``"max_completion_tokens"`` for OpenAI's reasoning models).
    """

    gen_ai_provider = "openai"

    OPTIONS = {"base_url": "https://api.openai.com/v1", "api_key": "", "model": "", "headers": {},
               "stream_usage": True, "max_tokens_param": "max_tokens"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._url = self.options["base_url"].rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", **self.options["headers"]}
        if self.options["api_key"]:
            self._headers["Authorization"] = f"Bearer {self.options['api_key']}"

    def url(self) -> str:
        return self._url

    def headers(self) -> dict:
        return self._headers

    def body(self, call: BackendCall, *, stream: bool) -> dict:
        params = dict(call.params)
        if self.options["max_tokens_param"] != "max_tokens" and "max_tokens" in params:
            params[self.options["max_tokens_param"]] = params.pop("max_tokens")
        body = {"model": call.model, "messages": call.messages, **params, "stream": stream}
        if stream and self.options["stream_usage"]:
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, call: BackendCall) -> AsyncIterator[Delta | Usage]:
        finished = False
        async with self.post(self.body(call, stream=True), call) as response:
            async for data in sse_data(response, self.alias):
                if data == "[DONE]":
                    finished = True
                    break
                pieces, ends = self._read_chunk(data)
                # Not kept while the next chunk is awaited (a second or more on a slow model):
                # the decoded chunk, about 15 objects, 0.8 KB per open stream (tracemalloc).
                del data
                finished = finished or ends
                for piece in pieces:
                    yield piece
        if not finished:
            raise LLMUnavailable("stream ended before the answer was finished", provider=self.alias)

    def _read_chunk(self, data: dict) -> tuple[list[Delta | Usage], bool]:
        """A stream chunk's text deltas and usage, and whether it ends the answer."""
        if "error" in data:
            raise LLMUnavailable(f"error in stream: {str(data['error'])[:200]}", provider=self.alias)
        pieces: list[Delta | Usage] = []
        ends = False
        for choice in data.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                pieces.append(Delta(text))
            if choice.get("finish_reason"):
                ends = True
        if data.get("usage"):
            pieces.append(_usage(data["usage"]))
        return pieces, ends

    async def complete(self, call: BackendCall) -> Completion:
        async with self.post(self.body(call, stream=False), call) as response:
            try:
                data = await response.json(content_type=None)
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise LLMUnavailable("malformed completion response", provider=self.alias) from exc
        usage = data.get("usage")
        return Completion(
            text=text,
            usage=_usage(usage) if usage else None,
            finish_reason=choice.get("finish_reason"),
        )


def _usage(usage: dict) -> Usage:
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
