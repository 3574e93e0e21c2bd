"""Chat pages (before the search app's catch-all in config/urls.py)."""

from django.urls import path

from apps.chat import views

app_name = "chat"

urlpatterns = [
    path("", views.chat_index, name="index"),
    path("<int:pk>/", views.chat_thread, name="thread"),
    path("<int:pk>/messages", views.message_stream, name="messages"),
    path("<int:pk>/delete", views.chat_delete, name="delete"),
]
