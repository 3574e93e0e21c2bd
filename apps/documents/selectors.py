"""Reads of documents. Visibility is defined once, here, and used by every
reader-facing path (pages, API, search SQL, chat retrieval):

* anonymous readers: published + public;
* signed-in users: also published + internal, and anything they authored;
* staff: everything.
Drafts and private documents are therefore only ever seen by their author and staff.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from apps.documents.models import Document

PUBLISHED = Document.Status.PUBLISHED
PUBLIC = Document.Visibility.PUBLIC
INTERNAL = Document.Visibility.INTERNAL


def _is_authenticated(user) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


def visibility_q(user, *, prefix: str = "") -> Q:
    """A ``Q`` selecting the documents ``user`` may see; ``prefix`` e.g. ``"document__"``."""
    if _is_authenticated(user) and user.is_staff:
        return Q()
    p = prefix
    if not _is_authenticated(user):
        return Q(**{f"{p}status": PUBLISHED, f"{p}visibility": PUBLIC})
    return Q(**{f"{p}status": PUBLISHED, f"{p}visibility__in": [PUBLIC, INTERNAL]}) | Q(**{f"{p}author_id": user.pk})


def visibility_sql(user, *, alias: str = "d") -> tuple[str, list]:
    """The same rule as a SQL predicate over ``documents_document AS <alias>``, with params.

    For raw retrieval SQL (search, chat) so that visibility is decided inside the query.
    """
    if _is_authenticated(user) and user.is_staff:
        return "TRUE", []
    if not _is_authenticated(user):
        return f"({alias}.status = %s AND {alias}.visibility = %s)", [PUBLISHED, PUBLIC]
    return (
        f"(({alias}.status = %s AND {alias}.visibility IN (%s, %s)) OR {alias}.author_id = %s)",
        [PUBLISHED, PUBLIC, INTERNAL, user.pk],
    )


def visibility_scope(user) -> str:
    """A short key naming what ``user`` may see, for caches keyed by permission.

    Two users with the same scope see exactly the same documents.
    """
    if _is_authenticated(user) and user.is_staff:
        return "staff"
    if not _is_authenticated(user):
        return "anonymous"
    return f"user:{user.pk}"


def visible_documents(*, user) -> QuerySet[Document]:
    return Document.objects.filter(visibility_q(user))
