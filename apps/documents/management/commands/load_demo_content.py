from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.documents.importing import import_records, read_folder
from apps.documents.models import Document
from apps.documents.tasks import enqueue_embedding_batches

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"
DEMO_SOURCE = "demo"


class Command(BaseCommand):
    help = ("Load Quire's own documentation (apps/documents/demo/*.md) as published public documents. "
            "Idempotent (source 'demo' + file name): unchanged documents are left alone.")

    def handle(self, *args, **options):
        report = import_records(read_folder(DEMO_DIR), source=DEMO_SOURCE, visibility=Document.Visibility.PUBLIC,
                                publish=True, on_batch_committed=enqueue_embedding_batches)
        if report.errors:
            raise CommandError("demo content is invalid: " + "; ".join(report.errors))
        self.stdout.write(f"Demo content: {report.created} created, {report.updated} updated, "
                          f"{report.unchanged} unchanged; {len(report.to_embed)} queued for embedding.")
