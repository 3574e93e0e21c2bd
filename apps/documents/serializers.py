from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.documents.models import Chunk, Document


class DocumentListSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", default=None, allow_null=True, read_only=True,
                                   help_text="The author's username; null for imported documents.")
    chunk_count = serializers.SerializerMethodField()

    class Meta:
        model = Document
        fields = ["id", "slug", "title", "summary", "tags", "status", "visibility", "author", "source",
                  "external_id", "published_at", "created_at", "updated_at", "embedding_status", "embedded_at",
                  "chunk_count"]
        read_only_fields = fields

    @extend_schema_field(serializers.IntegerField())
    def get_chunk_count(self, obj) -> int:
        count = getattr(obj, "chunk_count", None)
        return obj.chunks.count() if count is None else count


class DocumentDetailSerializer(DocumentListSerializer):
    embedding_error = serializers.SerializerMethodField(help_text="Last embedding error (staff only, else empty).")

    class Meta(DocumentListSerializer.Meta):
        fields = [*DocumentListSerializer.Meta.fields, "body", "embedding_error"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_embedding_error(self, obj) -> str:
        request = self.context.get("request")
        return obj.embedding_error if request is not None and request.user.is_staff else ""


class DocumentWriteSerializer(serializers.ModelSerializer):
    """Create (title required) or update (any subset with PATCH). Bodies above
    DOCUMENT_MAX_BODY_BYTES are rejected with code ``body_too_large``."""

    slug = serializers.SlugField(max_length=320, required=False, help_text="Generated from the title if omitted.")
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False)

    class Meta:
        model = Document
        fields = ["title", "slug", "body", "summary", "tags", "status", "visibility", "published_at", "source",
                  "external_id"]
        extra_kwargs = {"body": {"required": False, "allow_blank": True, "trim_whitespace": False}}


class ChunkSerializer(serializers.ModelSerializer):
    has_embedding = serializers.SerializerMethodField()

    class Meta:
        model = Chunk
        fields = ["id", "ordinal", "heading_path", "text", "token_count", "content_hash", "embedding_model",
                  "has_embedding"]
        read_only_fields = fields

    @extend_schema_field(serializers.BooleanField())
    def get_has_embedding(self, obj) -> bool:
        return obj.embedding is not None


class ChunkPageSerializer(serializers.Serializer):
    """Limit/offset page of chunks (the API's pagination envelope)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ChunkSerializer(many=True)
