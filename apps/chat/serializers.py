"""API shapes of conversations, messages and the answer's stream events."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.chat.models import Conversation, Message


class SourceSerializer(serializers.Serializer):
    n = serializers.IntegerField(help_text="The passage number the answer cites as [n].")
    document_id = serializers.IntegerField()
    chunk_id = serializers.IntegerField()
    title = serializers.CharField()
    url = serializers.CharField(help_text="The document's page.")


class MessageSerializer(serializers.ModelSerializer):
    citations = SourceSerializer(many=True, read_only=True)
    cost = serializers.DecimalField(max_digits=12, decimal_places=8, read_only=True, help_text="USD")

    class Meta:
        model = Message
        fields = ["id", "role", "content", "status", "citations", "route", "provider", "model", "prompt_tokens",
                  "completion_tokens", "cost", "ttft_ms", "latency_ms", "cached", "error", "created_at"]
        read_only_fields = fields


class ConversationSerializer(serializers.ModelSerializer):
    message_count = serializers.IntegerField(read_only=True, default=0)
    page_url = serializers.SerializerMethodField()

    class Meta:
        model = Conversation
        fields = ["id", "title", "created_at", "updated_at", "message_count", "page_url"]
        read_only_fields = ["id", "created_at", "updated_at", "message_count", "page_url"]

    def get_page_url(self, obj) -> str:
        return reverse("chat:thread", args=[obj.pk])


class ConversationDetailSerializer(ConversationSerializer):
    # Set by the view: the messages with their citations as the caller may see them now.
    messages = MessageSerializer(many=True, read_only=True, source="shown_messages")

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "messages"]


class ConversationCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


# What check_question accepts, for the schema: blank and over-long questions are refused by it
# (empty_question, question_too_long), not by the serializer, so their codes stay the page's.
@extend_schema_field({"type": "string", "minLength": 1, "maxLength": settings.CHAT_MAX_QUESTION_CHARS,
                      "pattern": r"\S"})
class QuestionField(serializers.CharField):
    def run_validation(self, data=serializers.empty):
        if isinstance(data, str) and not data.strip():
            return ""  # check_question's empty_question, as on the page
        return super().run_validation(data)


class QuestionSerializer(serializers.Serializer):
    question = QuestionField(trim_whitespace=True,
                             help_text="The question (CHAT_MAX_QUESTION_CHARS at most, not blank).")


# --- stream events (the `data:` JSON of each `event:` type) -------------------------------
class MetaEventSerializer(serializers.Serializer):
    message_id = serializers.IntegerField()
    conversation_id = serializers.IntegerField()
    sources = SourceSerializer(many=True, help_text="The passages shown to the model (visible to the caller).")


class TokenEventSerializer(serializers.Serializer):
    text = serializers.CharField(help_text="The next piece of the answer.")


class CitationsEventSerializer(serializers.Serializer):
    citations = SourceSerializer(many=True, help_text="Sources the answer cites; other [n] marks were dropped.")


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()


class DoneEventSerializer(serializers.Serializer):
    message_id = serializers.IntegerField()
    status = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()
    extractive = serializers.BooleanField(help_text="No language model is configured: passages were quoted.")
    cached = serializers.BooleanField()
    usage = UsageSerializer()
    cost = serializers.DecimalField(max_digits=12, decimal_places=8, help_text="USD, from the ledger")
    ttft_ms = serializers.FloatField(allow_null=True)
    latency_ms = serializers.FloatField()
    upstream_ttft_ms = serializers.FloatField(allow_null=True)
    prepare_ms = serializers.FloatField(allow_null=True, help_text="Limits, retrieval and prompt before the call")
    retrieval_ms = serializers.FloatField(
        allow_null=True, help_text="Of prepare_ms: the passages retrieved, with the wait for the question's vector")


class ErrorEventSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="e.g. llm_unavailable, budget_exceeded, max_duration")
    message = serializers.CharField()
    message_id = serializers.IntegerField()
