from django.urls import path

from apps.core import api

urlpatterns = [
    path("me", api.MeView.as_view(), name="me"),
]
