"""OpenAPI description of the OpenAI-compatible endpoint.

Its views are async Django views (DRF has no async views), which
drf-spectacular cannot introspect, so this post-processing hook adds them to
the one schema (wired in ``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``).
"""

from __future__ import annotations

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
MODELS = {"type": "object", "properties": {
    "object": {"type": "string", "example": "list"},
    "data": {"type": "array", "items": {"type": "object", "properties": {
        "id": {"type": "string", "example": "chat"}, "object": {"type": "string", "example": "model"},
        "created": {"type": "integer"}, "owned_by": {"type": "string"}}}},
}}


def _header(description: str, kind: str = "integer") -> dict:
    return {"description": description, "schema": {"type": kind}}


# Sent with every response for a key that has a requests-per-minute limit (as OpenAI does).
RATE_LIMIT_HEADERS = {
    "Retry-After": _header("Seconds to wait before the next request (429 only)."),
    "x-ratelimit-limit-requests": _header("The key's requests per minute."),
    "x-ratelimit-remaining-requests": _header("Requests left in the current window."),
    "x-ratelimit-reset-requests": _header("When the full allowance is back, e.g. 1.5s.", "string"),
}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def add_openai_compatible_paths(result, generator, request, public):
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("ErrorEnvelope", ERROR)
    schemas.update({"OpenAIChatMessage": MESSAGE, "OpenAIUsage": USAGE,
                    "OpenAIChatCompletionRequest": REQUEST, "OpenAIChatCompletion": COMPLETION,
                    "OpenAIModelList": MODELS})
    components.setdefault("securitySchemes", {})["quireApiKey"] = {
        "type": "http", "scheme": "bearer", "description": "An API key created by staff in admin."}
    security = [{"quireApiKey": []}]
    result.setdefault("paths", {})["/v1/chat/completions"] = {"post": {
        "operationId": "llm_chat_completions",
        "tags": ["llm"],
        "summary": "OpenAI-compatible chat completion (streamed as server-sent events when stream is true)",
        "security": security,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/OpenAIChatCompletionRequest"},
            "examples": {"Chat": {"value": {"model": "chat", "stream": True,
                                            "messages": [{"role": "user", "content": "What is Quire?"}]}}},
        }}},
        "responses": {
            "200": {"description": "The completion, or a text/event-stream of chat.completion.chunk objects.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIChatCompletion"}},
                                "text/event-stream": {"schema": {"type": "string"}}},
                    "headers": {k: v for k, v in RATE_LIMIT_HEADERS.items() if k != "Retry-After"}},
            "400": _error("Invalid request body."),
            "401": _error("Missing or invalid API key."),
            "404": _error("Unknown model (route)."),
            "429": {**_error("Monthly budget exhausted (code budget_exceeded), or the API key's requests per "
                             "minute used up (code rate_limit_exceeded; retry after Retry-After seconds)."),
                    "headers": RATE_LIMIT_HEADERS},
            "502": _error("No provider could answer."),
            "503": _error("No provider could answer."),
            "504": _error("No provider answered in time."),
        },
    }}
    result["paths"]["/v1/models"] = {"get": {
        "operationId": "llm_models",
        "tags": ["llm"],
        "summary": "The routes that can be used as model names",
        "security": security,
        "responses": {"200": {"description": "Model list", "content": {
                                  "application/json": {"schema": {"$ref": "#/components/schemas/OpenAIModelList"}}}},
                      "401": _error("Missing or invalid API key.")},
    }}
    return result
