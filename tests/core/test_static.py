"""`make run` (uvicorn, DEBUG) serves the stylesheet: ASGI has no runserver to do it."""

import asyncio
import importlib

import httpx
import pytest

from tests.conftest import BASE_DIR


async def get(app, path):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get(path)


@pytest.mark.django_db
def test_dev_asgi_application_serves_static_files(settings):
    import config.asgi

    settings.DEBUG = True
    try:
        app = importlib.reload(config.asgi).application
        response = asyncio.run(get(app, "/static/css/quire.css"))
    finally:
        settings.DEBUG = False
        importlib.reload(config.asgi)
    assert response.status_code == 200
    assert response.content == (BASE_DIR / "static" / "css" / "quire.css").read_bytes()


@pytest.mark.django_db
def test_without_debug_the_app_leaves_static_files_to_whitenoise_or_the_proxy(settings):
    import config.asgi

    app = importlib.reload(config.asgi).application
    response = asyncio.run(get(app, "/static/css/quire.css"))
    assert response.status_code == 404
