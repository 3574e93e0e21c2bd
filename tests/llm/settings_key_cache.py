"""Test settings for web processes that remember API keys for five minutes, as
production processes do for 30 s: only the key version in Redis can make them
notice a revocation."""

from config.settings.test import *  # noqa: F403

LLM_API_KEY_CACHE_SECONDS = 300
