from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Quire core"

    def ready(self):
        from django.db.backends.signals import connection_created

        from apps.core import checks  # noqa: F401 - registers the system checks
        from apps.core.db import on_connection_created

        connection_created.connect(on_connection_created, dispatch_uid="quire-vector-dumpers")
