from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "apps.llm"
    label = "llm"
    verbose_name = "LLM proxy"

    def ready(self):
        from django.core.signals import setting_changed

        from apps.core.health import register_check
        from apps.llm import checks  # noqa: F401 - registers the system checks
        from apps.llm.conf import clear_caches
        from apps.llm.embeddings import check_warm_up

        setting_changed.connect(clear_caches, dispatch_uid="llm-conf-clear")
        register_check("embedding_model", check_warm_up)
