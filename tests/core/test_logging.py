import json
import logging

import pytest

from apps.core.logging import build_formatter


@pytest.fixture
def json_log_lines():
    """Capture what the real JSON formatter writes for the request logger."""
    records: list[str] = []
    formatter = build_formatter("json")

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(formatter.format(record))

    handler = Collect()
    logger = logging.getLogger("quire.request")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.mark.django_db
def test_request_id_is_honoured_returned_and_logged_as_json(client, json_log_lines):
    response = client.get("/readyz", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    lines = [json.loads(line) for line in json_log_lines]
    request_line = next(line for line in lines if line["event"] == "request")
    assert request_line["request_id"] == "abc-123"
    assert request_line["path"] == "/readyz"
    assert request_line["status"] == 200
    assert request_line["level"] == "info"


@pytest.mark.django_db
def test_unsafe_request_id_is_replaced(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert response["X-Request-ID"] != "bad id\nwith newline"
    assert len(response["X-Request-ID"]) == 32


def test_a_line_below_the_loggers_level_is_dropped_before_any_processor_runs(monkeypatch):
    """The processors (trace ids, timestamp, ...) run only for lines the logger will write."""
    from apps.core import logging as quire_logging

    spans_asked: list[int] = []

    class NoSpan:
        def get_span_context(self):
            spans_asked.append(1)
            return type("Context", (), {"is_valid": False})()

    monkeypatch.setattr(quire_logging, "_current_span", NoSpan)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    stdlib_logger = logging.getLogger("quire.test-levels")
    handler = Collect()
    stdlib_logger.addHandler(handler)
    stdlib_logger.setLevel(logging.WARNING)
    try:
        logger = quire_logging.get_logger("quire.test-levels")
        logger.info("below.the.level")
        assert (records, spans_asked) == ([], [])
        logger.warning("at.the.level")
        assert len(records) == 1 and spans_asked == [1]
    finally:
        stdlib_logger.removeHandler(handler)
