import json

import pytest
from django.core.management import call_command


def test_openapi_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.json"
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", "--file", str(out))
    schema = json.loads(out.read_text())
    assert schema["info"]["title"] == "Quire API"
    assert "/api/v1/me" in schema["paths"]


@pytest.mark.django_db
def test_schema_and_swagger_are_served(client):
    assert client.get("/api/schema/").status_code == 200
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


def _schema(tmp_path) -> dict:
    out = tmp_path / "schema.json"
    call_command("spectacular", "--format", "openapi-json", "--file", str(out))
    return json.loads(out.read_text())


def test_every_operation_documents_the_errors_it_can_answer_with_the_envelope(tmp_path):
    schema = _schema(tmp_path)
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    operations = {(method.upper(), path): operation for path, item in schema["paths"].items()
                  if path.startswith("/api/") for method, operation in item.items()}
    assert len(operations) >= 16
    for (method, path), operation in operations.items():
        responses = operation["responses"]
        expected = {"401", "429"} | ({"404"} if "{" in path else set())
        if method in ("PUT", "PATCH") or (method == "POST" and not path.endswith("/reembed")):
            expected |= {"400", "403"}
        assert expected <= set(responses), (method, path, sorted(responses))
        for status in expected:
            assert responses[status]["content"]["application/json"]["schema"] == envelope, (method, path, status)
    assert "Retry-After" in operations[("GET", "/api/v1/search")]["responses"]["429"]["headers"]
    assert "WWW-Authenticate" in operations[("GET", "/api/v1/me")]["responses"]["401"]["headers"]
    assert "400" in operations[("GET", "/api/v1/documents")]["responses"]  # filters and pagination
    assert "400" not in operations[("GET", "/api/v1/documents/{id}")]["responses"]  # reads nothing
    assert "403" not in operations[("GET", "/api/v1/search")]["responses"]  # anyone may search
    # The chat stream's own descriptions are kept.
    assert "full" in operations[("POST", "/api/v1/chat/conversations/{id}/messages")]["responses"]["409"][
        "description"]


def test_reads_anyone_may_make_say_so_and_writes_do_not(tmp_path):
    paths = _schema(tmp_path)["paths"]
    assert {} in paths["/api/v1/documents"]["get"]["security"]
    assert {} in paths["/api/v1/documents/{id}"]["get"]["security"]
    assert {} not in paths["/api/v1/documents"]["post"]["security"]
    assert {} not in paths["/api/v1/me"]["get"]["security"]


def test_what_the_schema_says_of_fields_matches_what_the_api_does(tmp_path):
    schema = _schema(tmp_path)
    components = schema["components"]["schemas"]
    assert components["DocumentList"]["properties"]["author"]["nullable"] is True
    question = components["QuestionRequest"]["properties"]["question"]
    assert (question["minLength"], question["pattern"]) == (1, r"\S")
    offset = next(p for p in schema["paths"]["/api/v1/documents"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["minimum"] == 0
    messages = components["OpenAIChatCompletionRequest"]["properties"]["messages"]
    assert messages["minItems"] == 1
