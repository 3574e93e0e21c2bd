"""Reader-facing pages: home, search results, document."""

from django.urls import path

from apps.search import views

app_name = "search"

urlpatterns = [
    path("", views.home, name="home"),
    path("search", views.search, name="search"),
    path("d/<slug:slug>/", views.document_detail, name="document"),
]
