"""``GET /api/v1/search``: the same hybrid_search the pages use, as JSON."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.schema import ErrorEnvelopeSerializer
from apps.search.services import MODES, SearchFilters, hybrid_search


class SearchQuerySerializer(serializers.Serializer):
    q = serializers.CharField(help_text="Query text. Bare words are OR-ed and ranked (BM25 + semantic); "
                                        '"quoted phrases" must match, -word excludes.', trim_whitespace=True)
    mode = serializers.ChoiceField(choices=MODES, default="hybrid")
    tags = serializers.CharField(required=False, default="",
                                 help_text="Comma-separated tags; results carry all of them.")
    date_from = serializers.DateField(required=False, help_text="Published on or after (YYYY-MM-DD).")
    date_to = serializers.DateField(required=False, help_text="Published on or before (YYYY-MM-DD).")
    limit = serializers.IntegerField(min_value=1, max_value=100, default=10)
    offset = serializers.IntegerField(min_value=0, max_value=1000, default=0)

    def validate_tags(self, value: str) -> list[str]:
        return [t.strip() for t in value.split(",") if t.strip()][:10]


class SearchResultSerializer(serializers.Serializer):
    document_id = serializers.IntegerField()
    slug = serializers.CharField()
    title = serializers.CharField()
    url = serializers.CharField(help_text="Path of the document page.")
    snippet = serializers.CharField(help_text="HTML: escaped passage text with <mark> around matched terms.")
    score = serializers.FloatField(help_text="hybrid: RRF score; keyword: BM25; semantic: cosine similarity.")
    tags = serializers.ListField(child=serializers.CharField())
    published_at = serializers.DateTimeField(allow_null=True)
    heading_path = serializers.CharField(allow_blank=True)
    keyword_rank = serializers.IntegerField(allow_null=True)
    semantic_rank = serializers.IntegerField(allow_null=True)


class FacetSerializer(serializers.Serializer):
    tag = serializers.CharField()
    count = serializers.IntegerField()


class SearchResponseSerializer(serializers.Serializer):
    query = serializers.CharField()
    mode = serializers.ChoiceField(choices=MODES)
    total = serializers.IntegerField(help_text="Matching documents (semantic: nearest candidates).")
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    took_ms = serializers.FloatField()
    degraded = serializers.BooleanField(help_text="True when the embedding backend failed and only keyword ranking ran.")
    facets = FacetSerializer(many=True, help_text="Tag counts over the whole result set.")
    results = SearchResultSerializer(many=True)


_EXAMPLE = {
    "query": "vitamin d deficiency",
    "mode": "hybrid",
    "total": 42,
    "limit": 10,
    "offset": 0,
    "took_ms": 14.2,
    "degraded": False,
    "facets": [{"tag": "nutrition", "count": 12}, {"tag": "bone", "count": 5}],
    "results": [{
        "document_id": 17, "slug": "vitamin-d-and-bone-density", "title": "Vitamin D and bone density",
        "url": "/d/vitamin-d-and-bone-density/",
        "snippet": "Low <mark>vitamin</mark> <mark>D</mark> levels are associated with …",
        "score": 0.0325, "tags": ["nutrition", "bone"], "published_at": "2026-03-02T10:00:00Z",
        "heading_path": "Results", "keyword_rank": 1, "semantic_rank": 2,
    }],
}


class SearchView(APIView):
    """Hybrid search over the documents the caller may see."""

    permission_classes = [permissions.AllowAny]

    @extend_schema(
        tags=["search"],
        parameters=[SearchQuerySerializer],
        responses={
            200: SearchResponseSerializer,
            400: OpenApiResponse(ErrorEnvelopeSerializer,
                                 description="Invalid parameters (error envelope, code validation_error)."),
        },
        examples=[
            OpenApiExample("Hybrid search", value=_EXAMPLE, response_only=True, status_codes=["200"]),
            OpenApiExample("Invalid mode", response_only=True, status_codes=["400"], value={"error": {
                "code": "validation_error", "message": 'mode: "fuzzy" is not a valid choice.',
                "details": {"mode": ['"fuzzy" is not a valid choice.']}, "request_id": "4f1c0e..."}}),
        ],
    )
    def get(self, request):
        params = SearchQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        filters = SearchFilters(tags=data["tags"], date_from=data.get("date_from"), date_to=data.get("date_to"))
        found = hybrid_search(query=data["q"], user=request.user, filters=filters, limit=data["limit"],
                              offset=data["offset"], mode=data["mode"])
        body = found.as_dict()
        body["facets"] = [{"tag": tag, "count": count} for tag, count in found.facets]
        return Response(SearchResponseSerializer(body).data)
