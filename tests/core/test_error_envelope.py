import pytest
from django.contrib.auth import get_user_model

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.core.urls_errors")]


def assert_envelope(response, status, code):
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response["X-Request-ID"]
    return body["error"]


def test_400_validation_error_lists_fields(client):
    error = assert_envelope(client.post("/api/v1/echo", {"text": "too long"}), 400, "validation_error")
    assert "text" in error["details"]
    assert error["message"].startswith("text:")


def test_400_malformed_json(client):
    response = client.post("/api/v1/echo", "{not json", content_type="application/json")
    assert_envelope(response, 400, "parse_error")


def test_400_json_nested_too_deeply(client):
    body = '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"  # a RecursionError in json.loads: was a 500
    error = assert_envelope(client.post("/api/v1/echo", body, content_type="application/json"), 400, "parse_error")
    assert "nested too deeply" in error["message"]


def test_a_request_django_refuses_to_read_is_a_client_error(client, settings):
    # Django raises these while DRF reads the request: they were 500s.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post("/api/v1/echo", {"text": "x" * 2000}, content_type="application/json")
    assert_envelope(response, 413, "payload_too_large")
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    response = client.post("/api/v1/echo?" + "&".join(f"p{i}=1" for i in range(11)), {"text": "x"})
    assert_envelope(response, 400, "too_many_fields")
    response = client.post("/api/v1/echo", "&".join(f"f{i}=1" for i in range(11)),
                           content_type="application/x-www-form-urlencoded")
    assert_envelope(response, 400, "too_many_fields")


def test_401_without_credentials_and_bad_token(client):
    error = assert_envelope(client.get("/api/v1/me"), 401, "not_authenticated")
    assert "credentials" in error["message"].lower()
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION="Token nope")
    assert_envelope(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"] == "Token"


def test_403_for_non_staff(client):
    user = get_user_model().objects.create_user("reader", password="pw-123456")
    client.force_login(user)
    assert_envelope(client.get("/api/v1/staff"), 403, "permission_denied")


def test_404_unknown_api_path_is_json(client):
    assert_envelope(client.get("/api/v1/no-such-thing"), 404, "not_found")


def test_405_wrong_method(client):
    user = get_user_model().objects.create_user("reader", password="pw-123456")
    client.force_login(user)
    assert_envelope(client.delete("/api/v1/me"), 405, "method_not_allowed")


def test_500_never_leaks_internals(client):
    client.raise_request_exception = False
    response = client.get("/api/v1/boom")
    error = assert_envelope(response, 500, "server_error")
    assert "hunter2" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert error["details"] is None


def test_token_authentication_works(client):
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user("api-user", password="pw-123456")
    token = Token.objects.create(user=user)
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    assert response.json()["username"] == "api-user"
