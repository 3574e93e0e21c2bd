"""The site's ASGI application plus static files, for a uvicorn subprocess that
a real browser loads pages from (what ``live_server`` does for WSGI)."""

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

application = ASGIStaticFilesHandler(get_asgi_application())
