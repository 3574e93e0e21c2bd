from django.conf import settings
from django.core.exceptions import ValidationError


def validate_body_size(body: str) -> None:
    """Reject bodies above ``DOCUMENT_MAX_BODY_BYTES`` (UTF-8 bytes) with a clear message.

    Attached to ``Document.body``, so admin forms, API serializers and
    ``full_clean()`` (imports) all enforce it."""
    limit = settings.DOCUMENT_MAX_BODY_BYTES
    # surrogatepass: a lone surrogate is counted, not raised (UnicodeEncodeError was a 500); the
    # API's CharField refuses it with its own message, the import before it gets here.
    size = len((body or "").encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValidationError(
            "The body is %(size)s bytes; the maximum is %(limit)s bytes (%(mb)s MB). "
            "Split the document or raise DOCUMENT_MAX_BODY_BYTES.",
            code="body_too_large",
            params={"size": f"{size:,}", "limit": f"{limit:,}", "mb": f"{limit / 1024 / 1024:.1f}"},
        )
