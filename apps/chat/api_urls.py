from django.urls import path

from apps.chat import api

urlpatterns = [
    path("chat/conversations", api.ConversationListAPI.as_view(), name="chat-conversations"),
    path("chat/conversations/<int:pk>", api.ConversationDetailAPI.as_view(), name="chat-conversation"),
    path("chat/conversations/<int:pk>/messages", api.conversation_messages, name="chat-messages"),
]
