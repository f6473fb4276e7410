from urllib.parse import parse_qs, urlsplit

from gateway_pkg.config import Secret
from gateway_pkg.portal.login import login_url, redact_url, user_agent


def test_login_url_has_the_four_parameters_and_keeps_prefix():
    url = login_url("wss://portal.example/prefix/", token=Secret("t/k+n"), external_id="e", name="gw 1",
                    public_key="AAAA+/==")
    parts = urlsplit(url)
    assert parts.path == "/prefix/gateway/websocket"
    assert parse_qs(parts.query) == {"token": ["t/k+n"], "external_id": ["e"], "name": ["gw 1"],
                                     "public_key": ["AAAA+/=="]}


def test_login_url_without_token_for_header_mode():
    url = login_url("ws://h:1", token=None, external_id="e", name="n", public_key="k")
    assert "token" not in url and url.startswith("ws://h:1/gateway/websocket?")


def test_redact_url():
    assert redact_url("ws://h/x?token=abc&name=n") == "ws://h/x?token=<redacted>&name=n"


def test_user_agent_carries_connlib_version():
    ua = user_agent("1.4.17")
    assert " connlib/1.4.17 (" in ua and ua.isascii()
