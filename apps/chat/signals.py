"""Auth signal: a reader who signs in keeps the conversations of their anonymous session."""

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from apps.chat import services
from apps.chat.web import SESSION_CONVERSATIONS


@receiver(user_logged_in, dispatch_uid="chat.adopt_anonymous_conversations")
def adopt_anonymous_conversations(sender, request, user, **kwargs):
    session = getattr(request, "session", None)
    if session is None:
        return
    ids = session.pop(SESSION_CONVERSATIONS, [])
    services.conversations_adopt(user=user, conversation_ids=[int(pk) for pk in ids])
