from django.conf import settings
from django.core.management.base import BaseCommand

from apps.llm.embeddings import get_embedding_backend


class Command(BaseCommand):
    requires_system_checks = []  # runs at image build, with no database to check against
    help = (
        "Load every EMBEDDING_BACKENDS model in this process now: the local model's ONNX export is "
        "written (once per machine, into EMBEDDING_MODEL_CACHE_DIR) so that no web or worker process "
        "pays for it at start. The Docker image runs it at build."
    )

    def handle(self, *args, **options):
        for alias in settings.EMBEDDING_BACKENDS:
            backend = get_embedding_backend(alias)
            if not hasattr(backend, "load"):
                self.stdout.write(f"{alias}: {type(backend).__name__}, nothing to load")
                continue
            backend.load()
            where = getattr(backend, "onnx_path", None) or getattr(backend, "model_path", "")
            self.stdout.write(f"{alias}: {type(backend).__name__} {backend.model_id} ready ({where})")
