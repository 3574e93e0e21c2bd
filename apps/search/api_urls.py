from django.urls import path

from apps.search import api

urlpatterns = [
    path("search", api.SearchView.as_view(), name="search"),
]
