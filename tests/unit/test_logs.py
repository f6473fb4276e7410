import io
import json
import logging

import pytest

from gateway_pkg import logs


@pytest.fixture
def capture():
    stream = io.StringIO()
    logs.setup("debug", "human", ["s3cr3t-token"], stream=stream)
    yield stream
    logging.getLogger().handlers.clear()


def test_known_secret_is_scrubbed_from_any_logger(capture):
    logging.getLogger("websockets.client").warning("> GET /x?token=s3cr3t-token&name=a HTTP/1.1")
    logging.getLogger("other").info("value %s", "s3cr3t-token")
    text = capture.getvalue()
    assert "s3cr3t-token" not in text
    assert "token=<redacted>&name=a" in text


def test_unknown_token_in_url_is_scrubbed(capture):
    logging.getLogger("x").info("ws://h/gateway/websocket?token=abcdef&external_id=1")
    assert "abcdef" not in capture.getvalue()


def test_exception_text_is_scrubbed(capture):
    try:
        raise RuntimeError("failed for ws://h/?token=s3cr3t-token")
    except RuntimeError:
        logging.getLogger("x").exception("boom")
    assert "s3cr3t-token" not in capture.getvalue()


def test_header_values_scrubbed():
    scrubber = logs.SecretScrubber()
    assert "abc" not in scrubber.scrub("x-authorization: Bearer abc")


def test_human_format_is_upstream_like(capture):
    logging.getLogger("gateway_pkg.portal").info("Joined gateway room on portal")
    line = capture.getvalue().strip()
    assert line.endswith(" INFO gateway_pkg.portal: Joined gateway room on portal")
    assert line[4] == "-" and line[23] == "Z"


def test_json_format():
    stream = io.StringIO()
    logs.setup("info", "json", [], stream=stream)
    logging.getLogger("gateway_pkg").info("hello", extra={"fields": {"k": 1}})
    doc = json.loads(stream.getvalue())
    assert doc["level"] == "INFO" and doc["message"] == "hello" and doc["k"] == 1
    logging.getLogger().handlers.clear()


def test_short_secret_does_not_mangle_lines_but_url_is_still_scrubbed():
    scrubber = logs.SecretScrubber(["x"])
    assert scrubber.scrub("external_id=y&token=x") == "external_id=y&token=<redacted>"
