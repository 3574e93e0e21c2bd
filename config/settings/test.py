import os

from .base import *  # noqa: F403
from .base import env

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Each pytest run (and each xdist worker) gets its own database and queue, so
# parallel runs on one machine never share state.
_RUN_ID = env.str("QUIRE_TEST_RUN_ID", default=str(os.getpid()))
DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DB_NAME", default="test_quire")}  # noqa: F405
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default=f"quire-test-{_RUN_ID}")
CACHES["default"]["KEY_PREFIX"] = f"quire-test-{_RUN_ID}"  # noqa: F405
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"anon": "1000/min", "user": "1000/min"}  # noqa: F405
LOG_LEVEL = "WARNING"
LOGGING["root"]["level"] = LOG_LEVEL  # noqa: F405
