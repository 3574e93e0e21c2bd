"""Production settings fail at start-up with a message naming the variable."""

import os
import subprocess
import sys

from tests.conftest import BASE_DIR

GOOD = {
    "SECRET_KEY": "x" * 50,
    "ALLOWED_HOSTS": "quire.example",
    "DATABASE_URL": "postgres://u:p@db.example:5432/quire",
    "REDIS_URL": "redis://redis.example:6379/0",
}


def load_production(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in GOOD and k != "DJANGO_SETTINGS_MODULE"}
    env.update({k: v for k, v in {**GOOD, **overrides}.items() if v is not None})
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.production"
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('ok')"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60,
    )


def test_complete_production_environment_loads():
    result = load_production()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_missing_secret_key_is_named():
    result = load_production(SECRET_KEY=None)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY" in result.stderr


def test_missing_database_url_is_named():
    result = load_production(DATABASE_URL=None)
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_malformed_values_are_named():
    result = load_production(DEBUG="maybe")
    assert result.returncode != 0
    assert "DEBUG is malformed" in result.stderr
    result = load_production(DB_POOL_MAX_SIZE="ten")
    assert "DB_POOL_MAX_SIZE is malformed" in result.stderr
    result = load_production(REDIS_URL="localhost:6379")
    assert "REDIS_URL is malformed" in result.stderr
    result = load_production(EMBEDDING_LOCAL_RUNTIME="tensorflow")
    assert result.returncode != 0 and "EMBEDDING_LOCAL_RUNTIME is malformed: use onnx or torch" in result.stderr
    for amount in ("twenty", "-5", "NaN"):
        result = load_production(LLM_ANONYMOUS_MONTHLY_BUDGET_USD=amount)
        assert result.returncode != 0 and "LLM_ANONYMOUS_MONTHLY_BUDGET_USD is malformed" in result.stderr
    assert load_production(LLM_ANONYMOUS_MONTHLY_BUDGET_USD="20", LLM_DEFAULT_USER_MONTHLY_BUDGET_USD="5.50").returncode == 0


def test_production_serves_collected_static_files_through_whitenoise():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(GOOD, DJANGO_SETTINGS_MODULE="config.settings.production")
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "from django.core.handlers.wsgi import WSGIHandler; WSGIHandler(); "
        "m = settings.MIDDLEWARE; "
        "print(m.index('whitenoise.middleware.WhiteNoiseMiddleware') - m.index('django.middleware.security.SecurityMiddleware'), "
        "settings.STORAGES['staticfiles']['BACKEND'])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    position, backend = result.stdout.split()
    assert int(position) == 1  # right after SecurityMiddleware, as WhiteNoise documents
    assert backend.endswith("CompressedManifestStaticFilesStorage")
