from django.contrib import admin

from apps.chat.models import Conversation, Message
from apps.core.admin import QuireModelAdmin


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = ["role", "status", "content", "provider", "model", "completion_tokens", "cost", "ttft_ms", "created_at"]
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(QuireModelAdmin):
    list_display = ["id", "title", "owner", "created_at", "updated_at"]
    list_filter = ["created_at"]
    search_fields = ["title", "owner__username"]
    raw_id_fields = ["owner"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(QuireModelAdmin):
    list_display = ["id", "conversation", "role", "status", "provider", "model", "completion_tokens", "cost",
                    "ttft_ms", "created_at"]
    list_filter = ["role", "status", "provider", "created_at"]
    search_fields = ["content"]
    raw_id_fields = ["conversation"]
    readonly_fields = ["citations", "sources", "usage_record_id"]
