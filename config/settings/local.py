from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DEBUG", default=True)
LOG_FORMAT = env.str("LOG_FORMAT", default="console")
LOGGING["formatters"]["structured"]["fmt"] = LOG_FORMAT  # noqa: F405
