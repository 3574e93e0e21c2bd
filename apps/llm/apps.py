from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "apps.llm"
    label = "llm"
    verbose_name = "LLM proxy"

    def ready(self):
        from django.core.signals import setting_changed

        from apps.llm.conf import clear_caches

        setting_changed.connect(clear_caches, dispatch_uid="llm-conf-clear")
