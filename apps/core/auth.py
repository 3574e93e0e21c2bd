"""``AUTHENTICATION_BACKENDS = ["apps.core.auth.ModelBackend"]``: Django's ``ModelBackend``,
with the signed-in user of a request read by one prepared statement.

``get_user`` runs on every request of a signed-in reader (the chat stream included,
before its first token). Django's reads the user through the ORM
(``_default_manager.get(pk=...)``), about 0.35 ms of CPU to build and compile the
query; here it is a prepared statement (:func:`apps.core.db.fetch_prepared`, or
:func:`apps.core.adb.afetch_prepared` on the event loop for ``aget_user``) over the
model's concrete fields, turned into the model with ``from_db`` as the ORM does. Who
may sign in (``user_can_authenticate``), passwords and permissions are Django's own.
It reads the ``default`` database, as Quire has no other; with a database router or a
user model whose default manager filters rows, use Django's ``ModelBackend`` instead.
"""

from __future__ import annotations

import functools

from django.contrib.auth import backends, get_user_model
from django.db import DEFAULT_DB_ALIAS

from apps.core.adb import afetch_prepared, offline_connection
from apps.core.db import fetch_prepared


class ModelBackend(backends.ModelBackend):
    def get_user(self, user_id):
        return self._user_from(fetch_prepared(*_user_statement(user_id)))

    async def aget_user(self, user_id):
        """The same read on the event loop (apps.core.adb), for async views (the chat stream)."""
        return self._user_from(await afetch_prepared(*_user_statement(user_id)))

    def _user_from(self, rows: list[tuple]):
        if not rows:
            return None
        model = get_user_model()
        user = model.from_db(DEFAULT_DB_ALIAS, [f.attname for f in model._meta.concrete_fields], rows[0])
        return user if self.user_can_authenticate(user) else None


def _user_statement(user_id) -> tuple[str, list]:
    return _user_select(), [user_id]


@functools.cache
def _user_select() -> str:
    """The user row's statement, built once (it is on every signed-in request's path)."""
    model = get_user_model()
    quote = offline_connection().ops.quote_name  # not django.db.connection: see offline_connection
    columns = ", ".join(quote(f.column) for f in model._meta.concrete_fields)
    return f"SELECT {columns} FROM {quote(model._meta.db_table)} WHERE {quote(model._meta.pk.column)} = %s"
