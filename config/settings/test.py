import os

from .base import *  # noqa: F403
from .base import env

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Each pytest run (and each xdist worker) gets its own database and queue, so
# parallel runs on one machine never share state.
_RUN_ID = env.str("QUIRE_TEST_RUN_ID", default=str(os.getpid()))
DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DB_NAME", default="test_quire")}  # noqa: F405
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default=f"quire-test-{_RUN_ID}")
CACHES["default"]["KEY_PREFIX"] = f"quire-test-{_RUN_ID}"  # noqa: F405
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"anon": "1000/min", "user": "1000/min"}  # noqa: F405
LOG_LEVEL = "WARNING"
LOGGING["root"]["level"] = LOG_LEVEL  # noqa: F405

# --- documents & embeddings ---
# Deterministic hashed bag-of-words vectors (384-d), calls observable across
# processes; the real model is only loaded by tests marked `model`.
EMBEDDING_BACKENDS = {
    "default": {"BACKEND": "apps.llm.embeddings.testing.DeterministicBackend", "OPTIONS": {}},
    # The real model as deployed (ONNX Runtime), and on torch (the reference it must match).
    "minilm": {"BACKEND": "apps.llm.embeddings.onnx.OnnxBackend", "OPTIONS": {}},
    "minilm-torch": {"BACKEND": "apps.llm.embeddings.sentence_transformers.SentenceTransformerBackend", "OPTIONS": {}},
}
# Every query embedded anew: tests count embedding calls and inject failures, and the
# backend instance outlives a test. The cache's own tests switch it on.
EMBEDDING_QUERY_CACHE_SIZE = 0
EMBEDDING_QUERY_SHARED_CACHE_SECONDS = env.int("EMBEDDING_QUERY_SHARED_CACHE_SECONDS", default=0)  # its tests set it
EMBEDDING_TASK_MAX_RETRIES = 2
EMBEDDING_TASK_BACKOFF = 0.05
EMBEDDING_TASK_BACKOFF_MAX = 0.2
DOCUMENT_ENRICHMENT = False  # tests that need it switch it on

# --- chat ---
# The suite's many refused questions would pause early embeddings for the minute (apps.chat.early);
# that bound's own tests set it.
CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE = 1_000_000
# Every test's anonymous reader asks from 127.0.0.1: the per-address limit's own test sets it.
CHAT_ANON_QUESTIONS_PER_MINUTE_PER_ADDRESS = 0

# --- llm ---
# Tests flush the ledger themselves (apps.llm.ledger.flush) in their own DB
# connection; short timeouts and cool-downs keep failure tests fast.
LLM_LEDGER_FLUSH_INTERVAL = 0
LLM_TIMEOUTS = {"connect": 1.0, "first_token": 0.5, "total": 5.0}
LLM_RETRY = {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.05, "max_retry_after": 2.0}
LLM_BREAKER = {"failure_threshold": 3, "cooldown": 0.5}
LLM_API_KEY_CACHE_SECONDS = 0
