"""OpenAPI description of the OpenAI-compatible endpoint.

Its views are async Django views (DRF has no async views), which
drf-spectacular cannot introspect, so this post-processing hook adds them to
the one schema (wired in ``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``).
"""

from __future__ import annotations

import copy

from django.conf import settings

# The one error envelope (apps.core.exceptions). Every /api/ operation already makes it the
# component ``ErrorEnvelope`` (apps.core.schema); this shape stands in only for a schema without them.
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "example": "budget_exceeded"},
        "message": {"type": "string"},
        "details": {"nullable": True},
        "request_id": {"type": "string", "nullable": True},
    }}},
}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"type": "string"},
}}
USAGE = {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                          "completion_tokens": {"type": "integer"},
                                          "total_tokens": {"type": "integer"}}}
REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "A route name from GET /v1/models.", "example": "chat"},
        "messages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/OpenAIChatMessage"}},
        "stream": {"type": "boolean", "default": False},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1, "description": "Capped by the route's max tokens."},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "presence_penalty": {"type": "number"},
        "frequency_penalty": {"type": "number"},
        "seed": {"type": "integer"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "cache": {"type": "boolean", "default": True, "description": "Quire extension: false bypasses the cache."},
    },
}
COMPLETION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "example": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"},
            "message": {"$ref": "#/components/schemas/OpenAIChatMessage"},
            "finish_reason": {"type": "string"},
        }}},
        "usage": {"$ref": "#/components/schemas/OpenAIUsage"},
    },
}
EMBEDDING_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "description": "An embedding model's id or alias from GET /v1/models.",
                  "example": "sentence-transformers/all-MiniLM-L6-v2"},
        "input": {"oneOf": [{"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1,  # maxItems: LLM_API_EMBEDDING_MAX_INPUTS
                             "items": {"type": "string", "minLength": 1}}],
                  "description": "A text or a list of texts (token arrays are not supported). A text longer "
                                 "than the model takes is refused (context_window_exceeded), not cut."},
        "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float",
                            "description": "base64: each vector's little-endian float32 bytes."},
        "dimensions": {"type": "integer", "minimum": 1,
                       "description": "Must be the model's own dimensions if given."},
        "input_type": {"type": "string", "enum": ["document", "query"], "default": "document",
                       "description": "Quire extension: query embeds the inputs as search queries."},
        "user": {"type": "string", "description": "The caller's end-user id (accepted, not used)."},
    },
}
EMBEDDING_LIST = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"type": "string", "example": "list"},
        "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                            "properties": {
            "object": {"type": "string", "example": "embedding"},
            "index": {"type": "integer"},
            "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
                          "description": "Floats, or a base64 string when encoding_format is base64."},
        }}},
        "model": {"type": "string"},
        "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                   "total_tokens": {"type": "integer"}}},
    },
}
MODELS = {"type": "object", "properties": {
    "object": {"type": "string", "example": "list"},
    "data": {"type": "array", "items": {"type": "object", "properties": {
        "id": {"type": "string", "example": "chat"}, "object": {"type": "string", "example": "model"},
        "created": {"type": "integer"}, "owned_by": {"type": "string"}}}},
}}


def _header(description: str, kind: str = "integer") -> dict:
    return {"description": description, "schema": {"type": kind}}


# Sent with every response for a key that has a requests- or tokens-per-minute limit (as OpenAI does).
RATE_LIMIT_HEADERS = {
    "Retry-After": _header("Seconds to wait before the next request (429 only)."),
    "x-ratelimit-limit-requests": _header("The key's requests per minute."),
    "x-ratelimit-remaining-requests": _header("Requests left in the current window."),
    "x-ratelimit-reset-requests": _header("When the full allowance is back, e.g. 1.5s.", "string"),
    "x-ratelimit-limit-tokens": _header("The key's model tokens per minute (when it has a token limit)."),
    "x-ratelimit-remaining-tokens": _header("Tokens left before requests are refused."),
    "x-ratelimit-reset-tokens": _header("When the full token allowance is back, e.g. 12s.", "string"),
}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def _post(operation_id: str, summary: str, request_schema: str, examples: dict, responses: dict,
          security: list) -> dict:
    """A JSON POST under /v1/: its own responses, plus the API key's 401 and 429 and the rate
    limit headers on its 200."""
    ok = {**responses["200"], "headers": {k: v for k, v in RATE_LIMIT_HEADERS.items() if k != "Retry-After"}}
    return {"post": {
        "operationId": operation_id, "tags": ["llm"], "summary": summary, "security": security,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{request_schema}"}, "examples": examples}}},
        "responses": {
            **responses, "200": ok,
            "401": _error("Missing or invalid API key."),
            "429": {**_error("Monthly budget exhausted (code budget_exceeded), or the API key's requests or "
                             "tokens per minute used up (code rate_limit_exceeded, details.limit naming which; "
                             "retry after Retry-After seconds)."),
                    "headers": RATE_LIMIT_HEADERS},
        },
    }}


def _embedding_request() -> dict:
    schema = copy.deepcopy(EMBEDDING_REQUEST)
    schema["properties"]["input"]["oneOf"][1]["maxItems"] = settings.LLM_API_EMBEDDING_MAX_INPUTS
    return schema


def add_openai_compatible_paths(result, generator, request, public):
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("ErrorEnvelope", ERROR)
    schemas.update({"OpenAIChatMessage": MESSAGE, "OpenAIUsage": USAGE,
                    "OpenAIChatCompletionRequest": REQUEST, "OpenAIChatCompletion": COMPLETION,
                    "OpenAIModelList": MODELS, "OpenAIEmbeddingRequest": _embedding_request(),
                    "OpenAIEmbeddingList": EMBEDDING_LIST})
    components.setdefault("securitySchemes", {})["quireApiKey"] = {
        "type": "http", "scheme": "bearer", "description": "An API key created by staff in admin."}
    security = [{"quireApiKey": []}]
    paths = result.setdefault("paths", {})
    paths["/v1/chat/completions"] = _post(
        "llm_chat_completions", "OpenAI-compatible chat completion (streamed as server-sent events when stream is true)",
        "OpenAIChatCompletionRequest", {"Chat": {"value": {
            "model": "chat", "stream": True, "messages": [{"role": "user", "content": "What is Quire?"}]}}},
        {"200": {"description": "The completion, or a text/event-stream of chat.completion.chunk objects.",
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIChatCompletion"}},
                             "text/event-stream": {"schema": {"type": "string"}}}},
         "400": _error("Invalid request body."),
         "404": _error("Unknown model (route)."),
         "413": _error("The request body is too large."),
         "502": _error("No provider could answer."),
         "503": _error("No provider could answer, or the database is unavailable (database_unavailable, with "
                       "Retry-After)."),
         "504": _error("No provider answered in time.")},
        security)
    paths["/v1/embeddings"] = _post(
        "llm_embeddings", "OpenAI-compatible embeddings from Quire's own embedding model (the vectors search uses)",
        "OpenAIEmbeddingRequest", {"Texts": {"value": {
            "model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["What is Quire?", "Hybrid search"]}}},
        {"200": {"description": "One vector per input, in order.",
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIEmbeddingList"}}}},
         "400": _error("Invalid request body, or a text longer than the model takes (context_window_exceeded)."),
         "404": _error("Unknown embedding model."),
         "413": _error("The request body is too large."),
         "502": _error("The embedding model failed."),
         "503": _error("The embedding model could not be reached, or the database is unavailable "
                       "(database_unavailable, with Retry-After)."),
         "504": _error("The embedding model did not answer in time.")},
        security)
    paths["/v1/models"] = {"get": {
        "operationId": "llm_models",
        "tags": ["llm"],
        "summary": "The model names: chat routes, and the embedding models POST /v1/embeddings serves",
        "security": security,
        "responses": {"200": {"description": "Model list", "content": {
                                  "application/json": {"schema": {"$ref": "#/components/schemas/OpenAIModelList"}}}},
                      "401": _error("Missing or invalid API key."),
                      "503": _error("The database is unavailable (database_unavailable, with Retry-After).")},
    }}
    return result
