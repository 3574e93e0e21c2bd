"""Staff admin for documents: pipeline state at a glance, re-embed / publish /
unpublish actions, the chunks a document was split into, and a rendered preview."""

from __future__ import annotations

import nh3
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from markdown_it import MarkdownIt

from apps.core.admin import QuireModelAdmin
from apps.documents import services
from apps.documents.enrichment import accept_suggestions
from apps.documents.models import Chunk, Document
from apps.documents.tasks import enqueue_embedding_batches

_markdown = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")
BADGE_COLOURS = {
    Document.EmbeddingStatus.PENDING: "#6b7280",
    Document.EmbeddingStatus.PROCESSING: "#2563eb",
    Document.EmbeddingStatus.READY: "#15803d",
    Document.EmbeddingStatus.FAILED: "#b91c1c",
}


class ChunkInline(admin.TabularInline):
    model = Chunk
    fields = ("ordinal", "token_count", "heading_path", "text_preview")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    verbose_name_plural = "Chunks (what search and chat retrieve)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Text")
    def text_preview(self, chunk: Chunk) -> str:
        text = chunk.text if len(chunk.text) <= 240 else chunk.text[:240] + "…"
        return text


@admin.register(Document)
class DocumentAdmin(QuireModelAdmin):
    list_display = ("title", "status", "visibility", "embedding_badge", "chunk_count", "source", "updated_at")
    list_filter = ("status", "visibility", "embedding_status", "source")
    search_fields = ("title", "slug", "external_id", "summary")
    prepopulated_fields = {"slug": ("title",)}
    date_hierarchy = "updated_at"
    list_per_page = 50
    autocomplete_fields = ()
    raw_id_fields = ("author",)
    actions = ("re_embed", "publish", "unpublish", "accept_suggested")
    inlines = (ChunkInline,)
    readonly_fields = ("embedding_badge", "embedding_error_display", "embedded_at", "content_hash",
                       "body_preview", "suggestions", "created_at", "updated_at")

    def get_fieldsets(self, request, obj=None):
        fieldsets = [
            (None, {"fields": ("title", "slug", "body", "summary", "tags")}),
            ("Publishing", {"fields": ("status", "visibility", "author", "published_at")}),
            ("Source", {"fields": ("source", "external_id"), "classes": ("collapse",)}),
        ]
        if obj is not None:
            embedding = ["embedding_badge", "embedded_at", "content_hash"]
            if obj.embedding_status == Document.EmbeddingStatus.FAILED:
                embedding.insert(1, "embedding_error_display")
            fieldsets.insert(1, ("Preview", {"fields": ("body_preview",)}))
            if obj.suggested_summary:
                fieldsets.insert(1, ("Suggested by the enrich route", {"fields": ("suggestions",)}))
            fieldsets.append(("Embedding", {"fields": embedding}))
            fieldsets.append(("Dates", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}))
        return fieldsets

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_chunk_count=Count("chunks"))

    # --- columns -------------------------------------------------------------------
    @admin.display(description="Embedding", ordering="embedding_status")
    def embedding_badge(self, obj: Document) -> str:
        colour = BADGE_COLOURS.get(obj.embedding_status, "#6b7280")
        return format_html(
            '<span class="embedding-badge embedding-{}" title="{}" style="background:{};color:#fff;'
            'padding:2px 8px;border-radius:9px;font-size:11px;white-space:nowrap">{}</span>',
            obj.embedding_status, obj.embedding_error[:300], colour, obj.get_embedding_status_display(),
        )

    @admin.display(description="Chunks", ordering="_chunk_count")
    def chunk_count(self, obj: Document) -> int:
        return obj._chunk_count if hasattr(obj, "_chunk_count") else obj.chunks.count()

    @admin.display(description="Embedding error")
    def embedding_error_display(self, obj: Document) -> str:
        return format_html('<pre class="embedding-error" style="white-space:pre-wrap;color:#b91c1c;margin:0">{}</pre>',
                           obj.embedding_error or "—")

    @admin.display(description="Rendered body")
    def body_preview(self, obj: Document) -> str:
        if not obj.body.strip():
            return "(empty body: nothing to embed)"
        html = nh3.clean(_markdown.render(obj.body), link_rel="noopener noreferrer nofollow")
        return format_html(
            '<div class="markdown-preview" style="max-height:32em;overflow:auto;max-width:60em;'
            'border:1px solid #ddd;padding:0 1em;background:#fff;color:#111">{}</div>', mark_safe(html))  # noqa: S308 - sanitised by nh3

    @admin.display(description="Suggestions")
    def suggestions(self, obj: Document) -> str:
        if not obj.suggested_summary:
            return "—"
        url = reverse("admin:documents_document_accept_suggestions", args=[obj.pk])
        tags = format_html_join(" ", '<code class="suggested-tag">{}</code>', ((t,) for t in obj.suggested_tags))
        # formaction: one click from inside the change form, posting (with its CSRF token) to the accept view
        return format_html(
            '<p class="suggested-summary">{}</p><p>{}</p>'
            '<button type="submit" class="button" formaction="{}" formmethod="post" name="_accept_suggestions">'
            "Accept summary and tags</button>", obj.suggested_summary, tags, url)

    def get_urls(self):
        return [
            path("<int:object_id>/accept-suggestions/", self.admin_site.admin_view(self.accept_suggestions_view),
                 name="documents_document_accept_suggestions"),
            *super().get_urls(),
        ]

    def accept_suggestions_view(self, request, object_id: int):
        document = get_object_or_404(Document, pk=object_id)
        if request.method != "POST" or not self.has_change_permission(request, document):
            return redirect("admin:documents_document_change", object_id)
        accept_suggestions(document=document)
        self.message_user(request, "Suggested summary and tags accepted.", messages.SUCCESS)
        return redirect("admin:documents_document_change", object_id)

    # --- saving --------------------------------------------------------------------
    def save_model(self, request, obj, form, change):
        if not change and obj.author_id is None:
            obj.author = request.user
        if change and {"title", "body"} & set(form.changed_data):
            obj.embedding_status = Document.EmbeddingStatus.PENDING
        if obj.status == Document.Status.PUBLISHED and obj.published_at is None:
            from django.utils import timezone

            obj.published_at = timezone.now()
        super().save_model(request, obj, form, change)

    # --- actions -------------------------------------------------------------------
    @admin.action(description="Re-embed selected documents")
    def re_embed(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        services.mark_embedding_pending(ids)
        transaction.on_commit(lambda: enqueue_embedding_batches(ids))
        self.message_user(request, f"Queued {len(ids)} document(s) for embedding.", messages.SUCCESS)

    @admin.action(description="Accept suggested summary and tags")
    def accept_suggested(self, request, queryset):
        accepted = 0
        for document in queryset.exclude(suggested_summary=""):
            accept_suggestions(document=document)
            accepted += 1
        self.message_user(request, f"Accepted suggestions for {accepted} document(s).", messages.SUCCESS)

    @admin.action(description="Publish selected documents")
    def publish(self, request, queryset):
        changed = services.documents_publish(document_ids=queryset.values_list("pk", flat=True))
        self.message_user(request, f"Published {changed} document(s).", messages.SUCCESS)

    @admin.action(description="Unpublish selected documents (back to draft)")
    def unpublish(self, request, queryset):
        changed = services.documents_unpublish(document_ids=queryset.values_list("pk", flat=True))
        self.message_user(request, f"Unpublished {changed} document(s).", messages.SUCCESS)
