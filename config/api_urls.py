"""Everything under /api/v1/. Each app contributes its own ``api_urls`` module."""

from django.urls import include, path

app_name = "api"

urlpatterns: list = [
    path("", include("apps.core.api_urls")),
    path("", include("apps.documents.api_urls")),
    path("", include("apps.search.api_urls")),
    path("", include("apps.chat.api_urls")),
]
