from django.apps import AppConfig


class DocumentsConfig(AppConfig):
    name = "apps.documents"
    label = "documents"
    verbose_name = "Documents"

    def ready(self):
        from apps.documents import signals  # noqa: F401 - connects the handlers
        from apps.documents.checks import check_embedding_dimensions

        check_embedding_dimensions()
