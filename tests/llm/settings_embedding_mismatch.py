"""Test settings whose embedding backend produces 768-d vectors: start-up must fail."""

from config.settings.test import *  # noqa: F403

EMBEDDING_BACKENDS = {
    "default": {"BACKEND": "apps.llm.embeddings.testing.DeterministicBackend", "OPTIONS": {"DIMENSIONS": 768}},
}
