"""The API keeps its OpenAPI contract for any input: requests generated from the schema
(schemathesis: valid ones, and ones that break it on purpose) against the real site under
uvicorn, over HTTP, as a staff caller, a reader and an anonymous one (the LLM gateway's paths
with an API key), then sequences of calls chained through the schema's links.

No answer may be a 500; each status an answer carries must be one the operation documents,
with the documented content type and headers and a body matching its schema (the error
envelope included); an object created can be read back and one deleted stays gone. Generation is
derandomized: the same requests every run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.llm.services import api_key_create
from tests.chat.sse_client import AppServer
from tests.conftest import BASE_DIR, child_env, free_port
from tests.factories.documents import DocumentFactory, StaffFactory, UserFactory

# Per operation; QUIRE_CONTRACT_EXAMPLES=500 for a deeper search (a few minutes).
EXAMPLES = int(os.environ.get("QUIRE_CONTRACT_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def contract_server(django_db_setup, django_db_blocker, _fake_upstream_server):
    with django_db_blocker.unblock():
        env = child_env(LLM_OPENAI_BASE_URL=_fake_upstream_server.url, LLM_OPENAI_API_KEY="test-key",
                        API_THROTTLE_ANON="100000/min", API_THROTTLE_USER="100000/min",
                        CHAT_QUESTIONS_PER_MINUTE="0", CHAT_MAX_QUESTIONS_PER_CONVERSATION="100000")
    server = AppServer(free_port(), env).start()
    yield server
    server.stop()


@pytest.fixture
def credentials(transactional_db):
    """Committed (the server is another process): the ``Authorization`` header of each caller
    (a staff token, a reader's token, none), the gateway's API key, documents of each visibility."""
    from rest_framework.authtoken.models import Token

    staff, reader = StaffFactory(), UserFactory()
    DocumentFactory(author=staff)
    DocumentFactory(author=None)  # imported documents have no author
    DocumentFactory(author=staff, visibility="private")
    DocumentFactory(author=staff, visibility="internal", status="draft")
    _, raw_key = api_key_create(name="contract", user=staff)
    return {"staff": {"Authorization": f"Token {Token.objects.create(user=staff).key}"},
            "reader": {"Authorization": f"Token {Token.objects.create(user=reader).key}"},
            "anonymous": {}, "api_key": {"Authorization": f"Bearer {raw_key}"}}


def _checks(response) -> list:
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance]
    # An event stream's body is not checked here: OpenAPI 3.0 has no way to describe one event
    # (3.2's itemSchema); the chat stream's events are checked against their serializers in
    # tests/chat, the gateway's chunks in tests/llm.
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        checks.append(response_schema_conformance)
    return checks


def _fuzz(operation, *, base_url: str, headers: dict) -> int:
    """EXAMPLES generated requests to ``operation``; the first that breaks the contract raises.
    Returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def keeps_contract(case):
        nonlocal sent
        sent += 1
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=_checks(response))

    keeps_contract()
    return sent


@pytest.mark.parametrize("caller", ["staff", "reader", "anonymous"])
def test_every_operation_keeps_its_contract(contract_server, credentials, caller):
    # Loaded here, not with schemathesis's pytest plugin: its lazy loader does not run under pytest 9.
    api = schemathesis.openapi.from_url(f"{contract_server.url}/api/schema/")
    failures, operations, sent = [], 0, 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1
        # The gateway's paths take an API key (anonymous: none), the others the caller's token.
        headers = credentials["api_key"] if operation.path.startswith("/v1/") and caller != "anonymous" \
            else credentials[caller]
        try:
            sent += _fuzz(operation, base_url=contract_server.url, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, reported together
            failures.append(f"{operation.label}: {exc}")
    assert operations >= 19  # the schema's operations, /v1/ included (embeddings too)
    assert sent >= operations * EXAMPLES // 2, sent  # a few operations have fewer distinct inputs
    assert not failures, "\n\n".join(failures)


def test_sequences_of_calls_keep_the_contract(contract_server, credentials, tmp_path):
    """Stateful: schemathesis chains calls through the links it infers from the schema (a document
    created, read, changed, re-embedded, deleted; a conversation started, asked a question, its
    messages listed, deleted), so requests reach real objects, not random ids. Run by its own
    command line (its engine replays sequences that depend on earlier answers; Hypothesis's
    in-process state machine calls those flaky)."""
    completed = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(BASE_DIR / "tests" / "schemathesis.toml"),
         "run", f"{contract_server.url}/api/schema/", "--url", contract_server.url,
         "--phases", "stateful", "--exclude-path-regex", "^/v1/",
         "--header", f"Authorization: {credentials['staff']['Authorization']}",
         "--max-examples", str(4 * EXAMPLES), "--seed", "1", "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache is written there
    )
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    covered = re.search(r"API Links:\s+(\d+) covered", completed.stdout)
    assert covered and int(covered.group(1)) >= 10, completed.stdout[-3000:]  # calls chained through links
