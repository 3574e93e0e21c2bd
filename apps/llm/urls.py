"""The OpenAI-compatible endpoint, mounted at /v1/ by config/urls.py."""

from django.urls import path

from apps.llm import api

urlpatterns = [
    path("chat/completions", api.chat_completions, name="llm-chat-completions"),
    path("embeddings", api.embeddings, name="llm-embeddings"),
    path("models", api.models, name="llm-models"),
]
