"""OpenAI-compatible endpoint: ``POST /v1/chat/completions``, ``POST /v1/embeddings`` and
``GET /v1/models``.

Async Django views (DRF has no async views), so a streamed answer holds no
thread under ASGI. Authenticated with ``Authorization: Bearer <API key>``; the
``model`` is a route name (``GET /v1/models`` lists them) and every call goes
through the same routes, breakers, cache, ledger and budgets as chat. Errors
use the one JSON envelope (``apps.core.exceptions.envelope``); an error after
streaming has started is sent as a final ``data: {"error": ...}`` event, which
OpenAI clients raise as an ``APIError``.

The response cache is scoped per key owner: the answer depends only on the
request, but we still never hand one customer's cached answer to another.
Extension: ``"cache": false`` in the body bypasses the cache.

Embeddings come from Quire's own ``EMBEDDING_BACKENDS`` (``LLM_API_EMBEDDING_ALIASES``; the
model is named by its id or its alias), the vectors search uses: another service can embed
its texts and queries into the same space, with the keys, limits, budgets and ledger of the
chat calls. Extension: ``"input_type": "query"`` embeds the inputs as search queries.

Every request is admitted by one Redis script (``apps.llm.keys``): a key revoked
in any process is refused at once, and a key with a requests- or tokens-per-minute limit
gets 429 ``rate_limit_exceeded`` (``details.limit`` naming which) with ``Retry-After``
once it is reached. Responses of limited keys carry OpenAI's ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests`` and ``x-ratelimit-reset-requests`` headers, and their
``-tokens`` twins.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import time
import uuid
from array import array

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.core import parsers
from apps.core.exceptions import envelope
from apps.core.logging import get_logger
from apps.llm.conf import route_names
from apps.llm.embeddings import get_embedding_backend
from apps.llm.exceptions import BudgetExceeded, LLMError
from apps.llm.services import (
    CacheRead,
    ChatRequest,
    KeyAdmission,
    aapi_key_admit,
    acomplete,
    aembed,
    api_embedding_model_ids,
    api_embedding_models,
    stream_chat,
)

logger = get_logger("quire.llm.api")
PASSTHROUGH_PARAMS = {"temperature": float, "top_p": float, "presence_penalty": float, "frequency_penalty": float,
                      "seed": int, "stop": (str, list)}
ROLES = {"system", "user", "assistant", "developer", "tool"}
ENCODING_FORMATS = ("float", "base64")
INPUT_TYPES = ("document", "query")


def _error(request, status: int, code: str, message: str, details=None, headers=None) -> JsonResponse:
    response = JsonResponse(envelope(code, message, details, request), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _method_not_allowed(request, allowed: str) -> JsonResponse:
    """405 with the ``Allow`` header RFC 9110 requires on it."""
    return _error(request, 405, "method_not_allowed", f'Method "{request.method}" not allowed.',
                  headers={"Allow": allowed})


def _budget_error(request, error: BudgetExceeded) -> JsonResponse:
    headers = {}
    if error.resets_at is not None:
        headers["Retry-After"] = str(max(1, int(error.resets_at.timestamp() - time.time())))
    return _error(request, 429, error.code, error.message, error.details(), headers)


async def _admit(request: HttpRequest, *, count: bool, chat_request_for=None) -> KeyAdmission:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return KeyAdmission(None)
    return await aapi_key_admit(raw.strip(), count=count, chat_request_for=chat_request_for)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``1m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


def _with_rate_headers(response: HttpResponse, admission: KeyAdmission) -> HttpResponse:
    if admission.limit is not None and admission.remaining is not None:
        response["x-ratelimit-limit-requests"] = str(admission.limit)
        response["x-ratelimit-remaining-requests"] = str(admission.remaining)
        response["x-ratelimit-reset-requests"] = _duration(admission.reset_after or 0)
    if admission.token_limit is not None:
        response["x-ratelimit-limit-tokens"] = str(admission.token_limit)
        response["x-ratelimit-remaining-tokens"] = str(admission.tokens_remaining)
        response["x-ratelimit-reset-tokens"] = _duration(admission.tokens_reset_after or 0)
    return response


def _rate_limited(request, admission: KeyAdmission) -> JsonResponse:
    retry_after = max(1, math.ceil(admission.retry_after))
    if admission.limited_by == "tokens":
        message = f"This API key's limit of {admission.token_limit} tokens per minute is spent"
        details = {"limit": "api_key_tokens_per_minute", "limit_tokens": admission.token_limit}
    else:
        message = f"This API key's limit of {admission.limit} requests per minute is reached"
        details = {"limit": "api_key_requests_per_minute", "limit_requests": admission.limit}
    response = _error(request, 429, "rate_limit_exceeded", f"{message}; retry in {retry_after} s.",
                      {**details, "retry_after": retry_after}, {"Retry-After": str(retry_after)})
    return _with_rate_headers(response, admission)


def _unauthenticated(request) -> JsonResponse:
    return _error(request, 401, "not_authenticated", "Send a valid API key as 'Authorization: Bearer <key>'.",
                  headers={"WWW-Authenticate": 'Bearer realm="quire"'})


def _json_with_model(body: bytes, model_is: str) -> tuple[dict | None, str | None]:
    """(the body's JSON object, None), its ``model`` a non-empty string, or (None, error message)."""
    try:
        data = parsers.loads(body or b"null")
    except ValueError:
        return None, "The body is not valid JSON."
    if not isinstance(data, dict):
        return None, "The body must be a JSON object."
    if not isinstance(data.get("model"), str) or not data["model"]:
        return None, f"model: {model_is} is required (see GET /v1/models)."
    return data, None


def _parse(body: bytes) -> tuple[dict | None, str | None]:
    """(validated fields, None) or (None, error message)."""
    data, problem = _json_with_model(body, "a route name")
    if data is None:
        return None, problem
    model = data["model"]
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "messages: a non-empty list is required."
    clean = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLES:  # a list or object is not hashable
            return None, f"messages[{index}]: role must be one of {sorted(ROLES)}."
        content = message.get("content")
        if isinstance(content, list):
            texts = [part.get("text", "") for part in content if isinstance(part, dict)]
            if not all(isinstance(text, str) for text in texts):
                return None, f"messages[{index}]: the text of a content part must be a string."
            content = " ".join(texts)
        if not isinstance(content, str):
            return None, f"messages[{index}]: content must be a string."
        if parsers.lone_surrogate(content) is not None:
            return None, f"messages[{index}]: content holds a lone surrogate (not Unicode text)."
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    params = {}
    for name, kind in PASSTHROUGH_PARAMS.items():
        value = data.get(name)
        if value is None:
            continue
        if kind is float:  # JSON as Python reads it also has NaN and Infinity
            typed = isinstance(value, int) or isinstance(value, float) and math.isfinite(value)
        else:
            typed = isinstance(value, kind)
        if isinstance(value, bool) or not typed:
            return None, f"{name}: wrong type."
        texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        if not all(isinstance(text, str) and parsers.lone_surrogate(text) is None for text in texts):
            return None, f"{name}: a string or a list of strings."
        params[name] = value
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return None, "max_tokens: a positive integer."
        params["max_tokens"] = max_tokens
    # Flags are JSON booleans, as OpenAI's API has them: "stream": "false" is a string that
    # Python would read as true, so it is refused rather than guessed at.
    for flag in ("stream", "cache"):
        if data.get(flag) is not None and not isinstance(data[flag], bool):
            return None, f"{flag}: true or false."
    stream_options = data.get("stream_options")
    if stream_options is None:
        stream_options = {}
    if not isinstance(stream_options, dict) or not isinstance(stream_options.get("include_usage", False), bool):
        return None, "stream_options: an object whose include_usage is true or false."
    return {
        "model": model, "messages": clean, "params": params, "stream": bool(data.get("stream")),
        "include_usage": stream_options.get("include_usage", False),
        "cache": data.get("cache") is not False,
    }, None


def _usage_json(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    try:
        fields, problem = _parse(request.body)  # the body is already in memory: no I/O before the key check
    except RequestDataTooBig:
        fields, problem = None, None
    valid = fields is not None and fields["model"] in route_names()

    def chat_request(key, cache_read=None) -> ChatRequest:
        return ChatRequest(route=fields["model"], messages=fields["messages"], user=key.user, api_key=key,
                           scope=f"api-user:{key.user_id}", cache=fields["cache"], params=fields["params"],
                           cache_read=cache_read)

    # One Redis round trip: key still valid, within its rate limit, and the cached answer.
    admission = await _admit(request, count=True, chat_request_for=chat_request if valid else None)
    if admission.key is None:
        return _unauthenticated(request)
    if admission.limited:
        return _rate_limited(request, admission)
    if not valid:
        if fields is None and problem is None:
            response = _error(request, 413, "payload_too_large", "The request body is too large.")
        elif problem:
            response = _error(request, 400, "validation_error", problem)
        else:
            response = _error(request, 404, "model_not_found", f"No model {fields['model']!r}; see GET /v1/models.")
        return _with_rate_headers(response, admission)
    chat = chat_request(admission.key, CacheRead(*admission.got) if admission.got is not None else None)
    return _with_rate_headers(await _chat_completion(request, fields, chat), admission)


async def _chat_completion(request: HttpRequest, fields: dict, chat: ChatRequest) -> HttpResponse:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not fields["stream"]:
        try:
            result = await acomplete(chat)
        except BudgetExceeded as error:
            return _budget_error(request, error)
        except LLMError as error:
            return _error(request, error.http_status, error.code, error.message, {"provider": error.provider})
        response = JsonResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": fields["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": "stop"}],
            "usage": _usage_json(result.usage),
        })
        response["X-Quire-Usage-Record"] = result.usage_record_id
        response["X-Quire-Provider"] = result.provider
        return response

    events = stream_chat(chat)
    try:
        first = await anext(events)  # budgets are checked here, before any byte is sent
    except BudgetExceeded as error:
        return _budget_error(request, error)
    response = StreamingHttpResponse(
        _sse(events, first, completion_id=completion_id, created=created, model=fields["model"],
             include_usage=fields["include_usage"]),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _sse(events, first, *, completion_id: str, created: int, model: str, include_usage: bool):
    head = f'{{"id":"{completion_id}","object":"chat.completion.chunk","created":{created},"model":{json.dumps(model)},'

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        body = json.dumps({"index": 0, "delta": delta, "finish_reason": finish})
        return f"data: {head}\"choices\":[{body}]}}\n\n".encode()

    try:
        # The role chunk goes out in the same write as the first token (one less send).
        pending = chunk({"role": "assistant", "content": ""})
        event = first
        while True:
            if event.type == "token":
                yield pending + chunk({"content": event.text})
                pending = b""
            elif event.type == "done":
                yield pending + chunk({}, "stop")
                if include_usage:
                    yield f'data: {head}"choices":[],"usage":{json.dumps(_usage_json(event.usage))}}}\n\n'.encode()
                break
            else:
                error = {"code": event.code, "message": event.message, "type": "upstream_error",
                         "details": {"partial": event.partial, "usage_record_id": event.usage_record_id}}
                yield pending + f"data: {json.dumps({'error': error})}\n\n".encode()
                break
            event = await anext(events)
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()  # a client that went away cancels the upstream call


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    if (await _admit(request, count=False)).key is None:  # listing models does not use up the rate limit
        return _unauthenticated(request)
    return JsonResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "quire"}
        for name in [*route_names(), *api_embedding_model_ids()]]})


def _parse_embeddings(body: bytes) -> tuple[dict | None, str | None]:
    """(validated fields, None) or (None, error message) for ``POST /v1/embeddings``."""
    data, problem = _json_with_model(body, "an embedding model")
    if data is None:
        return None, problem
    texts = data.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        return None, "input: a string or a non-empty list of strings is required."
    most = settings.LLM_API_EMBEDDING_MAX_INPUTS
    if len(texts) > most:
        return None, f"input: at most {most} texts per request ({len(texts)} sent)."
    for index, text in enumerate(texts):
        if isinstance(text, int | list) and not isinstance(text, bool):
            return None, f"input[{index}]: token arrays are not supported; send the text."
        if not isinstance(text, str):
            return None, f"input[{index}]: a string is required."
        if not text:
            return None, f"input[{index}]: an empty string cannot be embedded."
        if parsers.lone_surrogate(text) is not None:
            return None, f"input[{index}]: holds a lone surrogate (not Unicode text)."
    choices = {"encoding_format": ENCODING_FORMATS, "input_type": INPUT_TYPES}
    for name, allowed in choices.items():
        if data.get(name) is not None and data[name] not in allowed:
            return None, f"{name}: one of {list(allowed)}."
    dimensions = data.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        return None, "dimensions: a positive integer."
    if data.get("user") is not None and not isinstance(data["user"], str):
        return None, "user: a string."
    return {"model": data["model"], "texts": texts, "dimensions": dimensions,
            "encoding_format": data.get("encoding_format") or "float",
            "input_type": data.get("input_type") or "document"}, None


def _base64_vector(vector: list[float]) -> str:
    """OpenAI's ``base64`` format: the vector's little-endian float32 bytes."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    try:
        fields, problem = _parse_embeddings(request.body)
    except RequestDataTooBig:
        fields, problem = None, None
    admission = await _admit(request, count=True)
    if admission.key is None:
        return _unauthenticated(request)
    if admission.limited:
        return _rate_limited(request, admission)
    return _with_rate_headers(await _embeddings(request, fields, problem, admission.key), admission)


async def _embeddings(request: HttpRequest, fields: dict | None, problem: str | None, key) -> HttpResponse:
    if fields is None:
        if problem is None:
            return _error(request, 413, "payload_too_large", "The request body is too large.")
        return _error(request, 400, "validation_error", problem)
    alias = api_embedding_models().get(fields["model"])
    if alias is None:
        return _error(request, 404, "model_not_found",
                      f"No embedding model {fields['model']!r}; see GET /v1/models.")
    backend = get_embedding_backend(alias)
    if fields["dimensions"] not in (None, backend.dimensions):
        return _error(request, 400, "validation_error",
                      f"dimensions: {backend.model_id} gives {backend.dimensions}-dimensional vectors only.")
    try:
        result = await aembed(alias=alias, texts=fields["texts"], user=key.user, api_key=key,
                              kind=fields["input_type"])
    except BudgetExceeded as error:
        return _budget_error(request, error)
    except LLMError as error:
        return _error(request, error.http_status, error.code, error.message, {"provider": error.provider})
    encode = _base64_vector if fields["encoding_format"] == "base64" else list
    response = JsonResponse({
        "object": "list", "model": result.model,
        "data": [{"object": "embedding", "index": index, "embedding": encode(vector)}
                 for index, vector in enumerate(result.vectors)],
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    })
    response["X-Quire-Usage-Record"] = result.usage_record_id
    response["X-Quire-Provider"] = result.provider
    return response
