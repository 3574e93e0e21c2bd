import gc
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
# One model thread: a web process embeds one short query at a time (see settings).
os.environ.setdefault("EMBEDDING_THREADS", "1")
# Traces (only when an OTLP endpoint is set): before Django opens a connection or a client,
# which the instrumentations patch. See apps/core/tracing.py.
if settings.TRACING_ENABLED:
    from apps.core import tracing

    tracing.setup()
application = get_asgi_application()

from apps.llm.embeddings import warm_up_in_background  # noqa: E402

warm_up_in_background()

# /v1/ (the OpenAI-compatible LLM proxy) skips the thread-hopping middleware; see apps/llm/asgi.py.
from apps.llm.asgi import with_proxy_path  # noqa: E402

application = with_proxy_path(application)

# POST /chat/<id>/messages (the SSE answer) too: no parked thread per open stream; see apps/chat/asgi.py.
from apps.chat.asgi import with_chat_stream_path  # noqa: E402

application = with_chat_stream_path(application)

# Development (make run, DEBUG): serve /static/ from the app's finders, as runserver
# does. Production serves collected files through WhiteNoise (config/settings/production.py).
if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)

# The server's loop lives as long as the process: it keeps its database pool (apps/core/adb.py).
from apps.core.loops import serving  # noqa: E402

application = serving(application)

# Outermost, so every path has its server span, the lean ones included.
if settings.TRACING_ENABLED:
    application = tracing.instrument_asgi(application)

# Everything loaded so far lives as long as the process: keep it out of the cyclic
# GC's full collections, which otherwise stall a request now and then (p99).
gc.freeze()
