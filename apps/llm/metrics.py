"""Prometheus metrics of the inference proxy (served at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("quire_llm_requests_total", "Calls through the LLM proxy", ["route", "provider", "outcome"])
LATENCY = Histogram("quire_llm_latency_seconds", "Whole-call latency", ["route", "provider"], buckets=_LATENCY_BUCKETS)
TTFT = Histogram("quire_llm_ttft_seconds", "Time to first token", ["route", "provider"], buckets=_LATENCY_BUCKETS)
TOKENS = Counter("quire_llm_tokens_total", "Tokens through the proxy", ["route", "provider", "kind"])
COST = Counter("quire_llm_cost_usd_total", "Spend in USD", ["route", "provider", "model"])
CACHE = Counter("quire_llm_cache_total", "Response cache lookups", ["route", "result"])
BREAKER_STATE = Gauge("quire_llm_breaker_state", "Circuit breaker as last seen by this process "
                      "(0 closed, 1 half-open, 2 open)", ["provider"])
PROVIDER_FAILURES = Counter("quire_llm_provider_failures_total", "Failed provider attempts", ["provider", "code"])
LEDGER_FLUSHED = Counter("quire_llm_ledger_flushed_total", "UsageRecords written to the database")
QUERY_EMBEDDING_CACHE = Counter("quire_embedding_query_cache_total",
                                "Query embeddings by where the vector came from: hit (this process's recent "
                                "queries), shared_hit (another process's, through Redis), miss (computed)",
                                ["result"])
BUDGET_REJECTED = Counter("quire_llm_budget_rejected_total", "Calls refused by a budget", ["holder"])

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
