"""The site's ASGI application (config.asgi, with its lean paths) plus static
files, for a uvicorn subprocess that a real browser loads pages from (what
``live_server`` does for WSGI)."""

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from config.asgi import application as site

application = ASGIStaticFilesHandler(site)
