from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from apps.core.management.arguments import positive_int
from apps.documents.importing import count_records, import_records, read_path
from apps.documents.models import Document
from apps.documents.tasks import enqueue_embedding_batches


class Command(BaseCommand):
    help = (
        "Import documents from a BEIR corpus.jsonl (_id, title, text), a generic JSONL (title, body, "
        "optional tags, slug, id) or a folder of .md/.txt files. Idempotent by --source + external id: "
        "re-running skips unchanged documents and resumes an interrupted import. Bad lines are reported "
        "with their line number and skipped whole; the exit status is 1 if any line failed."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--source", default=None, help="source name (default: the file or folder name)")
        parser.add_argument("--visibility", choices=Document.Visibility.values, default=Document.Visibility.PUBLIC)
        parser.add_argument("--publish", action="store_true", help="publish imported documents (default: draft)")
        parser.add_argument("--batch-size", type=positive_int, default=500, help="documents per transaction")
        parser.add_argument("--no-embed", action="store_true", help="import only; run `reindex --stale` later")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, path: Path, source, visibility, publish, batch_size, no_embed, no_progress, **options):
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        source = source or (path.name if path.is_dir() else path.stem)
        total = count_records(path)
        progress = tqdm(total=total, unit="doc", desc=f"import {source}", disable=no_progress,
                        file=self.stderr._out)
        queued = unsent = 0

        def enqueue(ids):
            def send():
                nonlocal queued, unsent
                # after one refusal the broker is not asked again: the sweep queues the rest
                sent = enqueue_embedding_batches(ids) if not unsent else 0
                queued, unsent = queued + sent, unsent + len(ids) - sent

            if not no_embed:
                transaction.on_commit(send)  # after the batch committed, so the worker sees the rows

        try:
            report = import_records(read_path(path), source=source, visibility=visibility, publish=publish,
                                    batch_size=batch_size, on_progress=progress.update,
                                    on_batch_committed=enqueue)
        finally:
            progress.close()
        for error in report.errors:
            self.stderr.write(f"error: {error}")
        self.stdout.write(
            f"{source}: {report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
            f"{len(report.errors)} failed; {0 if no_embed else queued} queued for embedding"
        )
        if unsent:
            self.stderr.write(f"warning: the broker could not be reached; {unsent} documents stay pending until "
                              "it is back (Celery beat's documents.requeue_stranded queues them then)")
        if report.errors:
            raise CommandError(f"{len(report.errors)} line(s) were not imported (listed above)", returncode=1)
