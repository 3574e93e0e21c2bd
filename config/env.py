"""Typed environment reads that fail with the variable's name.

django-environ already raises ``ImproperlyConfigured`` naming a *missing*
variable; a *malformed* one (``WEB_CONCURRENCY=two``) would otherwise surface as
a bare ``ValueError`` deep in start-up. ``Env`` wraps every cast so both cases
say which variable is wrong.
"""

from __future__ import annotations

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"true", "on", "yes", "y", "1"}
_FALSE = {"false", "off", "no", "n", "0", ""}


class Env(environ.Env):
    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except ImproperlyConfigured:
            raise
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"Environment variable {var} is malformed: {exc}") from exc

    def bool(self, var, default=environ.Env.NOTSET):
        raw = self.str(var, default=None)
        if raw is None:
            if default is environ.Env.NOTSET:
                raise ImproperlyConfigured(f"Set the {var} environment variable")
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ImproperlyConfigured(
            f"Environment variable {var} is malformed: expected true/false, got {raw!r}"
        )

    def url_checked(self, var, default=environ.Env.NOTSET, schemes=("redis", "rediss")):
        value = self.str(var, default=default)
        if value is None:
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in schemes:
            raise ImproperlyConfigured(
                f"Environment variable {var} is malformed: expected a {'/'.join(schemes)}:// URL"
            )
        return value


env = Env()
