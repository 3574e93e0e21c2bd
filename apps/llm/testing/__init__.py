"""Test doubles that live beside the real backends (like Django's locmem email
backend): a real OpenAI/Anthropic-compatible HTTP server on 127.0.0.1."""
