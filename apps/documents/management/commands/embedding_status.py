from django.conf import settings
from django.core.management.base import BaseCommand

from apps.documents.selectors import embedding_overview, queue_idle


class Command(BaseCommand):
    help = "Documents by embedding status, chunk totals, the embedding queue depth, and stranded documents."

    def handle(self, *args, **options):
        overview = embedding_overview()
        self.stdout.write("status        documents")
        for status, count in overview["documents"].items():
            self.stdout.write(f"{status:<13} {count}")
        self.stdout.write(f"{'total':<13} {sum(overview['documents'].values())}")
        self.stdout.write(f"chunks: {overview['chunks']} ({overview['chunks_without_vector']} without a vector), "
                          f"model {overview['model_id']}")
        queue = overview["queue"]
        if queue.get("error"):
            self.stdout.write(f"queue {queue['name']}: unavailable ({queue['error']})")
        else:
            self.stdout.write(f"queue {queue['name']}: {queue['waiting']} waiting, "
                              f"{queue['unacked_here']} delivered but unacknowledged ({queue['unacked']} in all queues)")
        if overview["stranded"]:
            idle = queue_idle(queue)
            self.stdout.write(
                f"stranded: {overview['stranded']} documents pending or processing for over "
                f"{settings.DOCUMENT_REQUEUE_MIN_AGE_SECONDS} s; "
                + ("no task is on its way for them: Celery beat's documents.requeue_stranded queues them "
                   "(or run `manage.py reindex --stale`)" if idle else "the queue still holds work; they may be in it"))
