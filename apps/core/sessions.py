"""``SESSION_ENGINE = "apps.core.sessions"``: Django's database sessions, read with one
prepared statement.

Every request that carries a session cookie reads its session before anything else
(the chat stream included: it is on the path to the first token). Django's
``db`` engine reads it with ``Session.objects.get(...)``: building, compiling and
running that query and instantiating the model cost about 0.35 ms of CPU; the same
read as a prepared statement (:func:`apps.core.db.fetch_prepared`) a fraction of that.
The async read (``aload``, used by ``aget_user``) runs the same statement on the event
loop (:func:`apps.core.adb.afetch_prepared`) instead of in a thread. Everything else
(saving, expiring, cycling keys) is Django's own.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.utils import timezone

from apps.core.adb import afetch_prepared
from apps.core.db import fetch_prepared

# Sessions signed in before AUTHENTICATION_BACKENDS named apps.core.auth.ModelBackend name
# Django's ModelBackend, which that setting no longer lists: Django would treat their readers as
# signed out. The two backends are the same class but for how the user row is read.
_RENAMED_BACKENDS = {"django.contrib.auth.backends.ModelBackend": "apps.core.auth.ModelBackend"}


def _with_current_backend(data: dict) -> dict:
    backend = data.get(BACKEND_SESSION_KEY)
    renamed = _RENAMED_BACKENDS.get(backend)
    listed = settings.AUTHENTICATION_BACKENDS
    if renamed is not None and backend not in listed and renamed in listed:
        data[BACKEND_SESSION_KEY] = renamed  # kept when the session is next saved
    return data


class SessionStore(DatabaseSessionStore):
    def load(self):
        return _with_current_backend(super().load())

    async def aload(self):
        return _with_current_backend(await super().aload())

    def _get_session_from_db(self):
        """The session row if it exists and has not expired, else None (and the key is
        forgotten, as Django's engine does: the next save makes a new one)."""
        rows = fetch_prepared(*self._row_statement()) if self.session_key else []
        return self._session_from(rows)

    async def _aget_session_from_db(self):
        """The same read on the event loop (apps.core.adb), for async views (the chat stream)."""
        rows = await afetch_prepared(*self._row_statement()) if self.session_key else []
        return self._session_from(rows)

    def _row_statement(self) -> tuple[str, list]:
        return (f"SELECT session_data, expire_date FROM {self.get_model_class()._meta.db_table} "
                "WHERE session_key = %s AND expire_date > %s", [self.session_key, timezone.now()])

    def _session_from(self, rows: list[tuple]):
        if rows:
            return self.get_model_class()(session_key=self.session_key, session_data=rows[0][0],
                                          expire_date=rows[0][1])
        self._session_key = None
        return None
