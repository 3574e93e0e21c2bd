"""The session engine and auth backend that read their rows with prepared statements
(apps/core/sessions.py, apps/core/auth.py) behave as Django's own."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.sessions import SessionStore
from apps.llm.testing import run
from tests.factories.chat import ConversationFactory
from tests.factories.documents import UserFactory

pytestmark = pytest.mark.django_db


def _request_with_session(session_key):
    request = RequestFactory().get("/")
    request.session = SessionStore(session_key)
    return request


def _signed_in(client, user) -> str:
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def test_settings_use_the_prepared_statement_engine_and_backend():
    assert settings.SESSION_ENGINE == "apps.core.sessions"
    assert settings.AUTHENTICATION_BACKENDS == ["apps.core.auth.ModelBackend"]


def test_a_saved_session_is_read_back_in_one_round_trip():
    store = SessionStore()
    store["answer"] = 42
    store.save()
    with CaptureQueriesContext(connection) as queries:
        assert SessionStore(store.session_key)["answer"] == 42
    assert len(queries) == 1 and "django_session" in queries[0]["sql"]


def test_an_expired_or_unknown_session_reads_as_empty_and_its_key_is_forgotten():
    store = SessionStore()
    store["answer"] = 42
    store.save()
    Session.objects.filter(session_key=store.session_key).update(expire_date=timezone.now() - timedelta(seconds=1))
    expired = SessionStore(store.session_key)
    assert expired.get("answer") is None and expired.session_key is None
    unknown = SessionStore("x" * 32)
    assert dict(unknown.items()) == {} and unknown.session_key is None


def test_the_signed_in_user_is_read_with_every_field(client):
    user = UserFactory(first_name="Ada", is_staff=True)
    request = _request_with_session(_signed_in(client, user))
    with CaptureQueriesContext(connection) as queries:
        loaded = get_user(request)
    assert len(queries) == 2  # the session, the user
    assert (loaded.pk, loaded.username, loaded.first_name, loaded.is_staff, loaded.password) == (
        user.pk, user.username, "Ada", True, user.password)
    assert loaded._state.adding is False and loaded._state.db == "default"


def test_inactive_deleted_or_password_changed_users_are_anonymous(client):
    inactive, deleted, changed = UserFactory(), UserFactory(), UserFactory()
    keys = {name: _signed_in(client, user) for name, user in
            (("inactive", inactive), ("deleted", deleted), ("changed", changed))}
    inactive.is_active = False
    inactive.save()
    deleted.delete()
    changed.set_password("a-new-password-1")
    changed.save()
    for name, key in keys.items():
        assert get_user(_request_with_session(key)).is_anonymous, name


def test_a_signed_in_reader_is_recognised_end_to_end(client):
    conversation = ConversationFactory(title="mine")
    client.force_login(conversation.owner)
    listed = client.get("/api/v1/chat/conversations").json()
    assert [c["id"] for c in listed["results"]] == [conversation.pk]
    client.logout()
    assert client.get("/api/v1/chat/conversations").json()["results"] == []


def test_a_session_signed_in_through_djangos_model_backend_stays_signed_in():
    """Sessions from before the backend was apps.core.auth.ModelBackend name Django's class."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    user = UserFactory()
    store = SessionStore()
    store.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
                  HASH_SESSION_KEY: user.get_session_auth_hash()})
    store.save()
    assert get_user(_request_with_session(store.session_key)).pk == user.pk
    unknown = SessionStore()
    unknown.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "some.other.Backend",
                    HASH_SESSION_KEY: user.get_session_auth_hash()})
    unknown.save()
    assert get_user(_request_with_session(unknown.session_key)).is_anonymous  # still Django's rule


@pytest.mark.django_db(transaction=True)
def test_the_async_session_read_renames_the_backend_too():
    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY

    user = UserFactory()
    store = SessionStore()
    store.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend"})
    store.save()
    loaded = run(SessionStore(store.session_key).aload)
    assert loaded[BACKEND_SESSION_KEY] == "apps.core.auth.ModelBackend"


@pytest.mark.django_db(transaction=True)
def test_the_async_reads_run_on_the_loops_pool_and_apply_the_same_rules(monkeypatch):
    """aget_user (async views): the session and the user read on the event loop's own pool, with
    Django's rules: expired sessions, inactive users and changed passwords read as signed out."""
    from django.contrib.auth import aget_user
    from django.test import Client

    from apps.core import adb, auth, sessions

    active, inactive, changed = UserFactory(first_name="Ada"), UserFactory(), UserFactory()
    keys = {name: _signed_in(Client(), user) for name, user in
            (("active", active), ("inactive", inactive), ("changed", changed), ("expired", UserFactory()))}
    inactive.is_active = False
    inactive.save()
    changed.set_password("a-new-password-1")
    changed.save()
    Session.objects.filter(session_key=keys["expired"]).update(expire_date=timezone.now() - timedelta(seconds=1))
    tables = []

    async def pooled(sql, params, **kwargs):
        tables.append(sql.split(" FROM ")[1].split()[0])
        assert settings.DB_ASYNC_POOL is not None  # the loop's pool, not Django's connection in a thread
        return await adb.afetch_prepared(sql, params, **kwargs)

    monkeypatch.setattr(sessions, "afetch_prepared", pooled)
    monkeypatch.setattr(auth, "afetch_prepared", pooled)

    async def users():
        return {name: await aget_user(_request_with_session(key)) for name, key in keys.items()}

    found = run(users)
    assert (found["active"].pk, found["active"].first_name) == (active.pk, "Ada")
    assert found["inactive"].is_anonymous and found["changed"].is_anonymous and found["expired"].is_anonymous
    # The session and the user for three readers, the session alone for the expired one.
    assert tables.count("django_session") == 4 and tables.count('"auth_user"') == 3


def test_djangos_model_backend_is_left_alone_where_the_settings_still_list_it(settings):
    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY

    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
    store = SessionStore()
    store.update({SESSION_KEY: "1", BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend"})
    store.save()
    assert SessionStore(store.session_key)[BACKEND_SESSION_KEY] == "django.contrib.auth.backends.ModelBackend"
