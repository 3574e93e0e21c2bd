"""Signal handlers only enqueue, after the transaction commits (through
:func:`apps.documents.tasks.enqueue`: a broker outage never fails the save)."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from apps.documents.models import Document

EMBEDDED_FIELDS = frozenset({"title", "body"})


@receiver(post_save, sender=Document, dispatch_uid="documents.enqueue_embedding")
def enqueue_embedding(sender, instance: Document, raw: bool = False, update_fields=None, **kwargs):
    if raw:
        return
    if update_fields is not None and not (EMBEDDED_FIELDS & set(update_fields)):
        return  # e.g. publish/unpublish: the embedded content did not change
    from apps.documents.tasks import embed_document, enqueue

    document_id = instance.pk
    transaction.on_commit(lambda: enqueue(embed_document, document_id))


@receiver(post_save, sender=Document, dispatch_uid="documents.enqueue_enrichment")
def enqueue_enrichment(sender, instance: Document, raw: bool = False, **kwargs):
    from django.conf import settings

    if raw or not settings.DOCUMENT_ENRICHMENT:
        return
    from apps.documents.enrichment import needs_enrichment

    if not needs_enrichment(instance):
        return
    from apps.documents.tasks import enqueue, enrich_document

    document_id = instance.pk
    transaction.on_commit(lambda: enqueue(enrich_document, document_id))


@receiver(post_delete, sender=Document, dispatch_uid="documents.enqueue_purge")
def enqueue_purge(sender, instance: Document, **kwargs):
    from apps.documents.tasks import enqueue, purge_document

    document_id = instance.pk
    transaction.on_commit(lambda: enqueue(purge_document, document_id))
