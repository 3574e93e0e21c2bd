"""Server-rendered reader pages. Thin: parse the request, call the search service,
render. No JavaScript needed; every input gives a friendly page."""

from __future__ import annotations

import math
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.http import Http404
from django.shortcuts import render

from apps.documents.selectors import visible_documents
from apps.search.rendering import render_markdown
from apps.search.services import MODES, SearchFilters, hybrid_search, similar_documents

RECENT_DOCUMENTS = 10
MAX_PAGE = 100


class SearchForm(forms.Form):
    q = forms.CharField(required=False, strip=True)
    mode = forms.ChoiceField(choices=[(m, m) for m in MODES], required=False)
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_PAGE)
    date_from = forms.DateField(required=False)
    date_to = forms.DateField(required=False)


def home(request):
    documents = visible_documents(user=request.user).order_by("-published_at", "-updated_at")[:RECENT_DOCUMENTS]
    return render(request, "search/home.html", {"documents": documents, "modes": MODES, "mode": "hybrid"})


def _query_string(params: dict, **changes) -> str:
    merged = {**params, **changes}
    return "?" + urlencode({k: v for k, v in merged.items() if v not in (None, "", [])}, doseq=True)


def search(request):
    form = SearchForm(request.GET)
    form.is_valid()  # invalid fields are simply dropped (cleaned_data keeps the valid ones)
    data = form.cleaned_data
    q = data.get("q") or ""
    mode = data.get("mode") or "hybrid"
    page = data.get("page") or 1
    tags = [t for t in request.GET.getlist("tag") if t][:10]
    filters = SearchFilters(tags=tags, date_from=data.get("date_from"), date_to=data.get("date_to"))
    size = settings.SEARCH_PAGE_SIZE
    results = None
    if q:
        results = hybrid_search(query=q, user=request.user, filters=filters, limit=size,
                                offset=(page - 1) * size, mode=mode)
    params = {"q": q, "mode": mode if mode != "hybrid" else "", "tag": tags,
              "date_from": data.get("date_from") or "", "date_to": data.get("date_to") or ""}
    pages = math.ceil(results.total / size) if results else 0
    context = {
        "q": q,
        "mode": mode,
        "modes": [(m, _query_string(params, mode=m if m != "hybrid" else "", page="")) for m in MODES],
        "tags": [(t, _query_string(params, tag=[x for x in tags if x != t], page="")) for t in tags],
        "facets": [
            (tag, count, _query_string(params, tag=[*tags, tag], page=""))
            for tag, count in (results.facets if results else []) if tag not in tags
        ],
        "results": results,
        "page": page,
        "pages": min(pages, MAX_PAGE),
        "prev_url": _query_string(params, page=page - 1) if page > 1 else None,
        "next_url": _query_string(params, page=page + 1) if page < min(pages, MAX_PAGE) else None,
        "first_index": (page - 1) * size + 1,
        "form_errors": bool(form.errors),
        "date_from": data.get("date_from"),
        "date_to": data.get("date_to"),
    }
    return render(request, "search/results.html", context)


def document_detail(request, slug: str):
    document = visible_documents(user=request.user).filter(slug=slug).first()
    if document is None:
        raise Http404("No such document.")
    context = {
        "document": document,
        "body_html": render_markdown(document.body),
        "similar": similar_documents(document=document, user=request.user, limit=5),
    }
    return render(request, "search/document.html", context)
