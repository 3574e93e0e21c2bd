"""Settings shared by every environment. Everything is read from the environment
here (typed, one ``env.*`` call per setting); local/test/production only override.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, Quire talks to the embedded
servers that ``make services`` starts (see ``apps/core/devservices.py``).
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from apps.core import devservices
from config.env import env

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env.read_env(str(BASE_DIR / ".env"), overwrite=False) if (BASE_DIR / ".env").exists() else None

# --- core ---------------------------------------------------------------------------
SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-local-development-only")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_NAME = "Quire"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "django_prometheus",
    "apps.core",
    "apps.llm",
    "apps.documents",
    "apps.search",
    "apps.chat",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "apps.core.middleware.RequestIDMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.core.middleware.DatabaseUnavailableMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# Django's database sessions and ModelBackend, each reading its row with a prepared statement
# (apps/core/sessions.py, apps/core/auth.py): every signed-in request reads both.
SESSION_ENGINE = "apps.core.sessions"
AUTHENTICATION_BACKENDS = ["apps.core.auth.ModelBackend"]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -----------------------------------------------------------------------
# Django's native psycopg 3 connection pool (CONN_MAX_AGE must stay 0 with it).
DB_POOL = {
    "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
    "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
    "timeout": env.int("DB_POOL_TIMEOUT", default=10),
}
# Each event loop's own pool for the statements async views run on the loop (apps/core/adb.py:
# the chat stream's session, user, bookkeeping and retrieval). None: through Django's connection
# in a thread instead (tests inside a transaction set that: another connection would not see their rows).
DB_ASYNC_POOL = {
    "min_size": env.int("DB_ASYNC_POOL_MIN_SIZE", default=2),
    "max_size": env.int("DB_ASYNC_POOL_MAX_SIZE", default=8),
    "timeout": env.int("DB_POOL_TIMEOUT", default=10),
}
if env.str("DATABASE_URL", default=""):
    DATABASES = {"default": env.db_url("DATABASE_URL")}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": devservices.PG_DATABASE,
            "USER": "postgres",
            "HOST": str(devservices.postgres_socket_dir()),
        }
    }


def database(config: dict) -> dict:
    """``config`` with the pool and, unless DB_PREPARED_STATEMENTS is False, prepared statements.

    The session and user reads and the chat path's retrieval and bookkeeping statements are prepared on the connection
    (apps/core/db.py; the ORM's client-side binding never prepares). Django turns psycopg's
    prepared statements off unless OPTIONS say otherwise: False behind a pooler that cannot keep them.
    """
    options = config.setdefault("OPTIONS", {})
    options["pool"] = DB_POOL
    if env.bool("DB_PREPARED_STATEMENTS", default=True):
        options.setdefault("prepare_threshold", 5)
    config["CONN_MAX_AGE"] = 0
    return config


DATABASES["default"] = database(DATABASES["default"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis, cache, celery -----------------------------------------------------------
REDIS_URL = env.url_checked("REDIS_URL", default=devservices.redis_url(0))
CACHES = {
    "default": {
        "BACKEND": "apps.core.cache.RedisCache",  # one connection pool per process, not per request
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "quire",
        "TIMEOUT": 300,
    }
}

CELERY_BROKER_URL = env.url_checked("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.url_checked("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = "UTC"
# A task is acknowledged only after it finished, and a task whose worker died is
# put back: a crash loses nothing (tasks are idempotent, so redelivery is safe).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Unacked tasks are redelivered after this many seconds; must exceed the longest
# task (hard limit below) or a slow task would run twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    # kombu waits forever by default: a save would hang on a broker that stopped answering
    # without closing the connection. Above the worker's 1 s BRPOP wait.
    "socket_connect_timeout": 1.0,
    "socket_timeout": 5.0,
}
# One quick retry when a task cannot be sent (Celery's default is three): a save waits for the
# broker at most twice; what could not be sent is queued by the sweep (apps.documents.tasks).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=300)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=360)
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="quire")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- auth, i18n, static -------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first so unauthenticated API calls get 401 + WWW-Authenticate, not 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_PARSER_CLASSES": [
        "apps.core.parsers.JSONParser",  # a body nested too deeply is a 400 too
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "apps.core.pagination.LimitOffsetPage",
    "PAGE_SIZE": 20,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "apps.core.schema.QuireAutoSchema",  # every error status documented
    "EXCEPTION_HANDLER": "apps.core.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "apps.core.throttling.AnonRateThrottle",  # DRF's rates and keys, counted in O(1)
        "apps.core.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_THROTTLE_ANON", default="60/min"),
        "user": env.str("API_THROTTLE_USER", default="600/min"),
    },
    # An anonymous caller is its connection's address, as the ASGI server resolved it (uvicorn
    # takes X-Forwarded-For only from FORWARDED_ALLOW_IPS, the proxies it trusts). DRF's default
    # (None) would read X-Forwarded-For as sent: any client could pick a new address per request.
    "NUM_PROXIES": 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Quire API",
    "DESCRIPTION": (
        "Documents, hybrid search, RAG chat and an LLM gateway.\n\n"
        "Every error has one shape: `{\"error\": {\"code\": str, \"message\": str, "
        "\"details\": object|list|null, \"request_id\": str}}`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- llm (inference proxy, apps/llm) ---------------------------------------------------
# Providers are backends (dotted path + OPTIONS). With no LLM configured every
# route ends at the extractive backend, so `make run` works without any model.
from decimal import Decimal, InvalidOperation  # noqa: E402

LLM_OPENAI_BASE_URL = env.str("LLM_OPENAI_BASE_URL", default="")
LLM_OPENAI_API_KEY = env.str("LLM_OPENAI_API_KEY", default="")
LLM_OPENAI_MODEL = env.str("LLM_OPENAI_MODEL", default="gpt-4o-mini")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
LLM_ANTHROPIC_BASE_URL = env.str("LLM_ANTHROPIC_BASE_URL", default="https://api.anthropic.com")
LLM_ANTHROPIC_MODEL = env.str("LLM_ANTHROPIC_MODEL", default="claude-3-5-haiku-latest")
LLM_PROVIDERS = {"extractive": {"BACKEND": "apps.llm.backends.extractive.ExtractiveBackend", "OPTIONS": {}}}
if LLM_OPENAI_BASE_URL or LLM_OPENAI_API_KEY:
    LLM_PROVIDERS["openai"] = {
        "BACKEND": "apps.llm.backends.openai.OpenAIChatBackend",
        "OPTIONS": {"base_url": LLM_OPENAI_BASE_URL or "https://api.openai.com/v1",
                    "api_key": LLM_OPENAI_API_KEY, "model": LLM_OPENAI_MODEL},
    }
if ANTHROPIC_API_KEY:
    LLM_PROVIDERS["anthropic"] = {
        "BACKEND": "apps.llm.backends.anthropic.AnthropicBackend",
        "OPTIONS": {"base_url": LLM_ANTHROPIC_BASE_URL, "api_key": ANTHROPIC_API_KEY, "model": LLM_ANTHROPIC_MODEL},
    }
_LLM_CHAIN = [alias for alias in ("openai", "anthropic") if alias in LLM_PROVIDERS] + ["extractive"]
# Each route: its provider chain (aliases, or {"provider", "model", "params"} dicts),
# model params, max output tokens, and the context window chat trims prompts to.
LLM_ROUTES = {
    "chat": {"providers": _LLM_CHAIN, "params": {"temperature": 0.2}, "max_tokens": 800,
             "context_window": env.int("LLM_CHAT_CONTEXT_WINDOW", default=8192)},
    "enrich": {"providers": _LLM_CHAIN, "params": {"temperature": 0.0}, "max_tokens": 400,
               "context_window": 8192},
}
LLM_TIMEOUTS = {  # seconds; a route may override any of them with "timeouts"
    "connect": env.float("LLM_TIMEOUT_CONNECT", default=3.0),
    "first_token": env.float("LLM_TIMEOUT_FIRST_TOKEN", default=20.0),
    "total": env.float("LLM_TIMEOUT_TOTAL", default=120.0),
}
# Retries happen only before the first token: connect errors, 429 and 5xx.
LLM_RETRY = {"attempts": 2, "backoff_base": 0.25, "backoff_max": 4.0, "max_retry_after": 10.0}
LLM_BREAKER = {"failure_threshold": 3, "cooldown": 30.0}
LLM_CACHE_TTL = env.int("LLM_CACHE_TTL", default=3600)
# Upstream connections per process (and per upstream host); one per concurrent stream.
LLM_HTTP_POOL_LIMIT = env.int("LLM_HTTP_POOL_LIMIT", default=4096)
# Redis connections per process for breaker/cache/budgets/ledger; callers wait for a free one.
LLM_REDIS_MAX_CONNECTIONS = env.int("LLM_REDIS_MAX_CONNECTIONS", default=256)
# Seconds between batched UsageRecord writes by each web process; 0 leaves them to the
# Celery beat task (llm.flush_ledger) so no ledger write ever runs beside a request.
LLM_LEDGER_FLUSH_INTERVAL = env.float("LLM_LEDGER_FLUSH_INTERVAL", default=0.5)
# Celery beat also flushes the ledger queue, for web processes that went idle or died.
LLM_LEDGER_BEAT_SECONDS = env.float("LLM_LEDGER_BEAT_SECONDS", default=10.0)
CELERY_BEAT_SCHEDULE = {
    "flush-llm-ledger": {"task": "llm.flush_ledger", "schedule": LLM_LEDGER_BEAT_SECONDS},
}
# Web processes remember API keys this long; revocation still reaches every process at
# once (a key version in Redis, checked on each request): the TTL only bounds a Redis outage.
LLM_API_KEY_CACHE_SECONDS = 30
# Requests per minute per API key on /v1/ when the key sets none; unset = unlimited.
LLM_API_KEY_DEFAULT_RPM = env.int("LLM_API_KEY_DEFAULT_RPM", default=None)
# Model tokens per minute per API key on /v1/ when the key sets none; unset = unlimited.
LLM_API_KEY_DEFAULT_TPM = env.int("LLM_API_KEY_DEFAULT_TPM", default=None)
# The EMBEDDING_BACKENDS aliases POST /v1/embeddings serves (by the model's id or the alias),
# and the most inputs one request may carry.
LLM_API_EMBEDDING_ALIASES = env.list("LLM_API_EMBEDDING_ALIASES", default=["default"])
LLM_API_EMBEDDING_MAX_INPUTS = env.int("LLM_API_EMBEDDING_MAX_INPUTS", default=256)


def _usd(name: str) -> Decimal | None:
    """An amount in USD from the environment; unset or empty: None."""
    value = env.str(name, default="")
    try:
        amount = Decimal(value) if value else None
    except InvalidOperation:
        amount = Decimal(-1)
    if amount is not None and (not amount.is_finite() or amount < 0):
        raise ImproperlyConfigured(f"Environment variable {name} is malformed: expected an amount in USD, like 20")
    return amount


LLM_DEFAULT_USER_MONTHLY_BUDGET_USD = _usd("LLM_DEFAULT_USER_MONTHLY_BUDGET_USD")
# What all readers who are not signed in may spend together per month (chat without an account); unset = no limit.
LLM_ANONYMOUS_MONTHLY_BUDGET_USD = _usd("LLM_ANONYMOUS_MONTHLY_BUDGET_USD")
LLM_PRICES = {  # USD per 1M tokens
    "gpt-4o-mini": {"input": Decimal("0.15"), "output": Decimal("0.60")},
    "gpt-4o": {"input": Decimal("2.50"), "output": Decimal("10.00")},
    "claude-3-5-haiku-latest": {"input": Decimal("0.80"), "output": Decimal("4.00")},
    "claude-sonnet-4-5": {"input": Decimal("3.00"), "output": Decimal("15.00")},
}
# The OpenAI-compatible endpoint's async views are added to the schema by a hook.
SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"] = [
    "drf_spectacular.hooks.postprocess_schema_enums",
    "apps.llm.schema.add_openai_compatible_paths",
]

# --- documents & embeddings ------------------------------------------------------------
# Embedding backends by alias (dotted path + OPTIONS, like CACHES). "default" embeds
# chunks and queries. EMBEDDING_PROVIDER=local runs all-MiniLM-L6-v2 in-process;
# EMBEDDING_PROVIDER=openai calls an OpenAI-compatible /v1/embeddings endpoint whose
# model must produce 384-d vectors (the schema); a mismatch stops start-up.
EMBEDDING_PROVIDER = env.str("EMBEDDING_PROVIDER", default="local")
# Distinct search queries whose vectors each process keeps (3 KB each; 0 = embed every time).
EMBEDDING_QUERY_CACHE_SIZE = env.int("EMBEDDING_QUERY_CACHE_SIZE", default=1024)
# How long query vectors stay shared between processes through Redis (1.5 KB each; 0 = not shared).
EMBEDDING_QUERY_SHARED_CACHE_SECONDS = env.int("EMBEDDING_QUERY_SHARED_CACHE_SECONDS", default=86400)
# Where the local model's ONNX export is kept (written once per machine, see apps.llm.embeddings.onnx).
EMBEDDING_MODEL_CACHE_DIR = env.path("EMBEDDING_MODEL_CACHE_DIR", default=BASE_DIR / ".data" / "models")
# The local model's runtime: onnx (ONNX Runtime: same vectors, half the CPU) or torch (any model directory).
EMBEDDING_LOCAL_RUNTIME = env.str("EMBEDDING_LOCAL_RUNTIME", default="onnx")
_LOCAL_EMBEDDING_BACKENDS = {
    "onnx": "apps.llm.embeddings.onnx.OnnxBackend",
    "torch": "apps.llm.embeddings.sentence_transformers.SentenceTransformerBackend",
}
if EMBEDDING_PROVIDER == "local":
    if EMBEDDING_LOCAL_RUNTIME not in _LOCAL_EMBEDDING_BACKENDS:
        raise ImproperlyConfigured("Environment variable EMBEDDING_LOCAL_RUNTIME is malformed: use onnx or torch")
    EMBEDDING_BACKENDS = {
        "default": {
            "BACKEND": _LOCAL_EMBEDDING_BACKENDS[EMBEDDING_LOCAL_RUNTIME],
            "OPTIONS": {
                "BATCH_SIZE": env.int("EMBEDDING_BATCH_SIZE", default=32),
                # 0 = the runtime's choice (every core). Web processes embed one short query at
                # a time and set 1 (config/asgi.py): measured p95 of a query embedding on 2 busy
                # cores, 577 ms -> 16 ms (torch). The worker runs a pool child per core with 1
                # (Procfile, docker/compose.yml): one embeds while another writes (bench ingest).
                "THREADS": env.int("EMBEDDING_THREADS", default=0) or None,
            },
        }
    }
elif EMBEDDING_PROVIDER == "openai":
    EMBEDDING_BACKENDS = {
        "default": {
            "BACKEND": "apps.llm.embeddings.openai_http.OpenAIHTTPBackend",
            "OPTIONS": {
                "BASE_URL": env.str("EMBEDDING_API_BASE"),
                "API_KEY": env.str("EMBEDDING_API_KEY", default=""),
                "MODEL": env.str("EMBEDDING_MODEL"),
                "DIMENSIONS": env.int("EMBEDDING_DIMENSIONS", default=384),
                "MAX_TOKENS": env.int("EMBEDDING_MAX_TOKENS", default=256),
                "TIMEOUT": env.float("EMBEDDING_TIMEOUT", default=30.0),
                "BATCH_SIZE": env.int("EMBEDDING_BATCH_SIZE", default=64),
                # base64 (float32 bytes, OpenAI's SDK default) or float (JSON numbers).
                "ENCODING_FORMAT": env.str("EMBEDDING_ENCODING_FORMAT", default="base64"),
            },
        }
    }
else:
    raise ImproperlyConfigured("Environment variable EMBEDDING_PROVIDER is malformed: use local or openai")
# Chunk size and overlap in model tokens (title prefix included; never above the
# model's own limit, 256 for MiniLM).
DOCUMENT_CHUNK_TOKENS = env.int("DOCUMENT_CHUNK_TOKENS", default=200)
DOCUMENT_CHUNK_OVERLAP = env.int("DOCUMENT_CHUNK_OVERLAP", default=30)
# Largest accepted document body (UTF-8 bytes); admin, API and import reject more.
DOCUMENT_MAX_BODY_BYTES = env.int("DOCUMENT_MAX_BODY_BYTES", default=2 * 1024 * 1024)
# Let oversized bodies reach the validator (which says what the limit is) instead of
# Django's bare 400: form encoding can triple non-ASCII text.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, 4 * DOCUMENT_MAX_BODY_BYTES + 1024 * 1024)
# embed_document task: retries of transient embedding errors, exponential backoff
# base/cap in seconds (full jitter), then the document is marked failed.
EMBEDDING_TASK_MAX_RETRIES = env.int("EMBEDDING_TASK_MAX_RETRIES", default=5)
EMBEDDING_TASK_BACKOFF = env.float("EMBEDDING_TASK_BACKOFF", default=2.0)
EMBEDDING_TASK_BACKOFF_MAX = env.float("EMBEDDING_TASK_BACKOFF_MAX", default=300.0)
# Imports and reindex enqueue embedding tasks in batches of this many documents.
EMBEDDING_ENQUEUE_BATCH = env.int("EMBEDDING_ENQUEUE_BATCH", default=32)
# A document saved while the broker was unreachable keeps its pending status (the save
# succeeds); every DOCUMENT_REQUEUE_SECONDS (0 = never) Celery beat queues again the documents
# pending or processing, unchanged for DOCUMENT_REQUEUE_MIN_AGE_SECONDS, while the embedding
# queue is idle (apps.documents.tasks.requeue_stranded).
DOCUMENT_REQUEUE_SECONDS = env.float("DOCUMENT_REQUEUE_SECONDS", default=300.0)
DOCUMENT_REQUEUE_MIN_AGE_SECONDS = env.int("DOCUMENT_REQUEUE_MIN_AGE_SECONDS", default=120)
if DOCUMENT_REQUEUE_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["requeue-stranded-documents"] = {"task": "documents.requeue_stranded",
                                                          "schedule": DOCUMENT_REQUEUE_SECONDS}
# Publishing a document without a summary asks the "enrich" LLM route for a suggested
# summary and tags (staff accept them in admin). Bulk imports never trigger it.
DOCUMENT_ENRICHMENT = env.bool("DOCUMENT_ENRICHMENT", default=True)
DOCUMENT_ENRICHMENT_MAX_RETRIES = env.int("DOCUMENT_ENRICHMENT_MAX_RETRIES", default=3)
# Documents' draft/published choice is not the only field called "status" in the API.
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {})["DocumentStatusEnum"] = (
    "apps.documents.models.Document.Status"
)

# --- search -------------------------------------------------------------------------
# BM25 parameters (Lucene-like defaults that reach nDCG@10 0.68+ on SciFact).
SEARCH_BM25_K1 = env.float("SEARCH_BM25_K1", default=0.9)
SEARCH_BM25_B = env.float("SEARCH_BM25_B", default=0.4)
# Reciprocal rank fusion: score = sum(weight / (k + rank)) over keyword and semantic lists.
SEARCH_RRF_K = env.int("SEARCH_RRF_K", default=60)
SEARCH_RRF_WEIGHTS = {
    "keyword": env.float("SEARCH_RRF_WEIGHT_KEYWORD", default=1.0),
    "semantic": env.float("SEARCH_RRF_WEIGHT_SEMANTIC", default=1.0),
}
# Chunks are fused, then grouped per document; only each list's first N chunk ranks
# contribute (deeper matches still appear, after the fused ones).
SEARCH_RRF_DEPTH = env.int("SEARCH_RRF_DEPTH", default=100)
# HNSW candidate list per query (SET LOCAL hnsw.ef_search; raised to the number of
# chunks a query asks for). 128: smallest value with recall@10 >= 0.99 on 100k
# vectors in `bench search` (docs/benchmarks.md).
SEARCH_HNSW_EF_SEARCH = env.int("SEARCH_HNSW_EF_SEARCH", default=128)
# Nearest chunks fetched for the semantic list (raised to cover deep pages).
SEARCH_SEMANTIC_CANDIDATES = env.int("SEARCH_SEMANTIC_CANDIDATES", default=100)
# ef_search for retrieve_passages (chat's RAG retrieval; still at least its candidate depth):
# on SciFact it returns the same 8 passages as 128 for 99.6 % of them, recall@8 unchanged
# (0.815), ~2 ms sooner. See docs/benchmarks.md, "TTFT round 2".
SEARCH_PASSAGE_EF_SEARCH = env.int("SEARCH_PASSAGE_EF_SEARCH", default=64)
# Longest query text considered, and most distinct terms scored.
SEARCH_MAX_QUERY_CHARS = env.int("SEARCH_MAX_QUERY_CHARS", default=1000)
SEARCH_MAX_QUERY_TERMS = env.int("SEARCH_MAX_QUERY_TERMS", default=64)
SEARCH_PAGE_SIZE = env.int("SEARCH_PAGE_SIZE", default=10)

# --- chat (apps/chat) -----------------------------------------------------------------
CHAT_ROUTE = env.str("CHAT_ROUTE", default="chat")  # the LLM route answering questions
CHAT_RETRIEVAL_LIMIT = env.int("CHAT_RETRIEVAL_LIMIT", default=8)  # passages retrieved per question
CHAT_RETRIEVAL_MODE = env.str("CHAT_RETRIEVAL_MODE", default="hybrid")
CHAT_HISTORY_MESSAGES = env.int("CHAT_HISTORY_MESSAGES", default=6)  # recent turns sent with a question
CHAT_MAX_QUESTION_CHARS = env.int("CHAT_MAX_QUESTION_CHARS", default=2000)
CHAT_MAX_QUESTIONS_PER_CONVERSATION = env.int("CHAT_MAX_QUESTIONS_PER_CONVERSATION", default=50)
CHAT_QUESTIONS_PER_MINUTE = env.int("CHAT_QUESTIONS_PER_MINUTE", default=10)  # signed-in user; 0 = no limit
CHAT_ANON_QUESTIONS_PER_MINUTE = env.int("CHAT_ANON_QUESTIONS_PER_MINUTE", default=5)  # per session
# All anonymous sessions from one address together (a new session is free to make); 0 = no limit.
CHAT_ANON_QUESTIONS_PER_MINUTE_PER_ADDRESS = env.int("CHAT_ANON_QUESTIONS_PER_MINUTE_PER_ADDRESS", default=30)
# A question's query embedding starts before its caller is checked (0.5-1 ms sooner to the first
# token), at most this many at once per process (0 = never before the check) and not after this many
# were spent on refused questions in the current minute (forged credentials): apps.chat.early.
CHAT_EARLY_EMBEDDINGS_MAX = env.int("CHAT_EARLY_EMBEDDINGS_MAX", default=64)
CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE = env.int("CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE", default=60)
CHAT_HEARTBEAT_SECONDS = env.float("CHAT_HEARTBEAT_SECONDS", default=15.0)  # SSE comment when idle
CHAT_MAX_STREAM_SECONDS = env.float("CHAT_MAX_STREAM_SECONDS", default=180.0)  # then the answer is cut

# --- observability --------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
if LOG_FORMAT not in ("json", "console"):
    raise ImproperlyConfigured("Environment variable LOG_FORMAT is malformed: use json or console")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": "apps.core.logging.build_formatter",
            "fmt": LOG_FORMAT,
        },
    },
    "filters": {
        "not_a_readiness_answer": {"()": "django.utils.log.CallbackFilter",
                                   "callback": "ext://apps.core.logging.not_a_readiness_answer"},
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "structured", "stream": "ext://sys.stdout"},
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"filters": ["not_a_readiness_answer"]},
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

# /metrics answers only to "Authorization: Bearer <METRICS_TOKEN>" when set (manage.py check
# --deploy warns when it is not: then whoever reaches the web port reads the metrics).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)
ENVIRONMENT = env.str("ENVIRONMENT", default="development")

# Traces (OpenTelemetry, apps/core/tracing.py), read from the standard OTEL_* variables.
# Off, with nothing imported or instrumented, unless an OTLP/HTTP endpoint is set; the
# web process (config/asgi.py, wsgi.py) and each Celery pool child then export their spans.
OTEL_SDK_DISABLED = env.bool("OTEL_SDK_DISABLED", default=False)
OTEL_EXPORTER_OTLP_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")  # base URL, /v1/traces appended
_OTLP_TRACES_URL = env.str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", default="")  # used as it is (the OpenTelemetry rule)
for _variable, _url in (("OTEL_EXPORTER_OTLP_ENDPOINT", OTEL_EXPORTER_OTLP_ENDPOINT),
                        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", _OTLP_TRACES_URL)):
    if _url and not _url.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"Environment variable {_variable} is malformed: "
                                   "expected the http(s):// URL of an OTLP/HTTP receiver (port 4318)")
# Where spans go.
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = _OTLP_TRACES_URL or (
    OTEL_EXPORTER_OTLP_ENDPOINT.rstrip("/") + "/v1/traces" if OTEL_EXPORTER_OTLP_ENDPOINT else "")
TRACING_ENABLED = bool(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and not OTEL_SDK_DISABLED
OTEL_SERVICE_NAME = env.str("OTEL_SERVICE_NAME", default="quire")
# Share of traces kept, decided where a trace starts (parent-based: a request or task joins its caller's decision).
OTEL_TRACES_SAMPLER_ARG = env.float("OTEL_TRACES_SAMPLER_ARG", default=1.0)
if not 0.0 <= OTEL_TRACES_SAMPLER_ARG <= 1.0:
    raise ImproperlyConfigured("Environment variable OTEL_TRACES_SAMPLER_ARG is malformed: expected a ratio from 0 to 1")

# Demo account created by `make run` (password printed once, kept in .data/).
DEMO_USERNAME = env.str("DEMO_USERNAME", default="admin")

if SENTRY_DSN:
    from apps.core.observability import init_sentry

    init_sentry(dsn=SENTRY_DSN, environment=ENVIRONMENT, traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE)
