import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
# Traces (only when an OTLP endpoint is set): see config/asgi.py and apps/core/tracing.py.
if settings.TRACING_ENABLED:
    from apps.core import tracing

    tracing.setup()
application = get_wsgi_application()
if settings.TRACING_ENABLED:
    application = tracing.instrument_wsgi(application)
