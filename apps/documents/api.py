"""Documents API: readers list and read what they may see (the one visibility
rule in ``selectors``), staff create, update and delete; chunks per document."""

from __future__ import annotations

import django_filters
from django.db.models import Count
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from apps.core.pagination import LimitOffsetPage
from apps.documents import services
from apps.documents.models import Chunk, Document
from apps.documents.selectors import visible_documents
from apps.documents.serializers import (
    ChunkPageSerializer,
    ChunkSerializer,
    DocumentDetailSerializer,
    DocumentListSerializer,
    DocumentWriteSerializer,
)


class IsStaffOrReadOnly(permissions.BasePermission):
    message = "Only staff can change documents."
    allows_anonymous_reads = True  # the schema's `security: {}` on reads (apps.core.schema)

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class DocumentFilter(django_filters.FilterSet):
    tag = django_filters.CharFilter(method="filter_tag", label="Documents carrying this tag")
    status = django_filters.ChoiceFilter(choices=Document.Status.choices)
    visibility = django_filters.ChoiceFilter(choices=Document.Visibility.choices)
    embedding_status = django_filters.ChoiceFilter(choices=Document.EmbeddingStatus.choices)
    source = django_filters.CharFilter()

    class Meta:
        model = Document
        fields = ["tag", "status", "visibility", "embedding_status", "source"]

    def filter_tag(self, queryset, name, value):
        return queryset.filter(tags__contains=[value])


BODY_TOO_LARGE_EXAMPLE = OpenApiExample(
    "Body too large", status_codes=["400"], response_only=True,
    value={"error": {"code": "validation_error",
                     "message": "body: The body is 3,145,728 bytes; the maximum is 2,097,152 bytes (2.0 MB). "
                                "Split the document or raise DOCUMENT_MAX_BODY_BYTES.",
                     "details": {"body": ["The body is 3,145,728 bytes; ..."]}, "request_id": "4f1c..."}},
)


@extend_schema_view(
    list=extend_schema(summary="List documents you may read", tags=["documents"]),
    retrieve=extend_schema(summary="Read one document (body included)", tags=["documents"]),
    create=extend_schema(summary="Create a document (staff)", tags=["documents"], request=DocumentWriteSerializer,
                         responses={201: DocumentDetailSerializer}, examples=[BODY_TOO_LARGE_EXAMPLE]),
    update=extend_schema(summary="Replace a document (staff)", tags=["documents"], request=DocumentWriteSerializer,
                         responses=DocumentDetailSerializer, examples=[BODY_TOO_LARGE_EXAMPLE]),
    partial_update=extend_schema(summary="Update some fields (staff)", tags=["documents"],
                                 request=DocumentWriteSerializer, responses=DocumentDetailSerializer),
    destroy=extend_schema(summary="Delete a document and its chunks (staff)", tags=["documents"]),
)
class DocumentViewSet(viewsets.ModelViewSet):
    """Saving title or body queues re-embedding; ``embedding_status`` tells when it is done."""

    permission_classes = [IsStaffOrReadOnly]
    filterset_class = DocumentFilter
    lookup_value_regex = r"\d+"

    def get_queryset(self):
        queryset = visible_documents(user=self.request.user).select_related("author")
        if self.action in ("list", "retrieve"):
            queryset = queryset.annotate(chunk_count=Count("chunks"))
        return queryset.order_by("-updated_at", "-id")

    def get_serializer_class(self):
        if self.action == "list":
            return DocumentListSerializer
        if self.action in ("create", "update", "partial_update"):
            return DocumentWriteSerializer
        return DocumentDetailSerializer

    def _detail(self, document: Document, status_code=status.HTTP_200_OK) -> Response:
        return Response(DocumentDetailSerializer(document, context=self.get_serializer_context()).data,
                        status=status_code)

    def create(self, request, *args, **kwargs):
        serializer = DocumentWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        document = services.document_create(author=request.user, **serializer.validated_data)
        return self._detail(document, status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        document = self.get_object()
        serializer = DocumentWriteSerializer(document, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        document = services.document_update(document=document, **serializer.validated_data)
        return self._detail(document)

    def perform_destroy(self, instance):
        services.document_delete(document=instance)

    @extend_schema(summary="The chunks a document was split into", tags=["documents"],
                   responses=ChunkPageSerializer,
                   parameters=[OpenApiParameter(p["name"], p["schema"], description=p["description"])
                               for p in LimitOffsetPage().get_schema_operation_parameters(None)])
    @action(detail=True, methods=["get"], filterset_class=None)
    def chunks(self, request, pk=None):
        document = self.get_object()
        queryset = Chunk.objects.filter(document=document).order_by("ordinal").defer("embedding", "search_vector")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(ChunkSerializer(page, many=True).data)

    @extend_schema(summary="Queue re-embedding (staff)", tags=["documents"], request=None,
                   responses={202: DocumentDetailSerializer})
    @action(detail=True, methods=["post"], url_path="reembed")
    def reembed(self, request, pk=None):
        from django.db import transaction

        from apps.documents.tasks import enqueue_embedding_batches

        document = self.get_object()
        services.mark_embedding_pending([document.pk])
        transaction.on_commit(lambda: enqueue_embedding_batches([document.pk]))
        document.refresh_from_db()
        return self._detail(document, status.HTTP_202_ACCEPTED)
