"""Relay credentials in coturn's REST form, and relay address parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from gateway_pkg.devportal.relays import (
    REALM,
    InvalidRelay,
    RelayBook,
    gateway_salt,
    mint,
    parse_addr,
    parse_addrs,
    parse_relay_arg,
)

SECRET = "coturn-static-auth-secret"
KEY = base64.b64encode(bytes(range(32))).decode()


def coturn_password(secret: str, username: str) -> str:
    """What coturn computes for `use-auth-secret`: base64(HMAC-SHA1(secret, username))."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_mint_is_coturn_rest_form():
    creds = mint(SECRET, "salt", 1_900_000_000)
    assert creds.username == "1900000000:salt" and creds.expires_at == 1_900_000_000
    assert creds.password == coturn_password(SECRET, creds.username)
    assert SECRET not in repr(creds) and creds.password not in repr(creds)


def test_gateway_salt_is_sha256_of_the_public_key():
    digest = hashlib.sha256(KEY.encode()).digest()
    assert gateway_salt(KEY) == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert ":" not in gateway_salt(KEY)


def test_gateway_entries_one_per_address_one_id():
    book = RelayBook(SECRET, ttl=600)
    relay = book.add(("198.18.9.1:3478", "[fd00:9::1]:3478"))
    entries = book.gateway_entries(KEY, now=1_000_000)
    assert [e["addr"] for e in entries] == ["198.18.9.1:3478", "[fd00:9::1]:3478"]
    for entry in entries:
        assert entry["type"] == "turn" and entry["id"] == relay.id
        assert entry["username"] == f"1000600:{gateway_salt(KEY)}" and entry["expires_at"] == 1_000_600
        assert entry["password"] == coturn_password(SECRET, entry["username"])
    assert SECRET not in repr(book)


def test_client_views_get_fresh_random_salts():
    book = RelayBook(SECRET, ttl=600)
    book.add(("198.18.9.1:3478",))
    first, second = book.client_views(now=0)[0], book.client_views(now=0)[0]
    assert first["realm"] == REALM == "firezone" and first["addrs"] == ["198.18.9.1:3478"]
    assert first["username"] != second["username"]
    for view in (first, second):
        assert view["username"].startswith("600:") and view["password"] == coturn_password(SECRET, view["username"])


def test_without_a_secret_there_are_no_relays():
    book = RelayBook(None)
    assert not book.enabled and book.gateway_entries(KEY) == [] and book.client_views() == []
    with pytest.raises(InvalidRelay, match="--turn-secret-file"):
        book.add(("198.18.9.1:3478",))


@pytest.mark.parametrize(("text", "canonical"), [
    ("198.18.9.1:3478", "198.18.9.1:3478"),
    (" 10.0.0.1:1 ", "10.0.0.1:1"),
    ("[fd00:9:0::1]:3478", "[fd00:9::1]:3478"),
    ("[::1]:65535", "[::1]:65535"),
])
def test_addresses_are_canonical(text, canonical):
    assert parse_addr(text) == canonical


@pytest.mark.parametrize(("text", "message"), [
    ("198.18.9.1", "IP:PORT"),
    ("relay.test:3478", "needs an IP address"),
    ("fd00::1:3478", "written [IPv6]:PORT"),
    ("[10.0.0.1]:3478", "only IPv6"),
    ("10.0.0.1:0", "port"),
    ("10.0.0.1:70000", "port"),
    ("10.0.0.1:x", "port"),
    ("", "IP:PORT"),
])
def test_bad_addresses_say_why(text, message):
    with pytest.raises(InvalidRelay, match=re.escape(message)):
        parse_addr(text)


def test_a_relay_is_at_most_one_address_per_family():
    assert parse_relay_arg("198.18.9.1:3478,[fd00:9::1]:3478") == ("198.18.9.1:3478", "[fd00:9::1]:3478")
    for bad in ("198.18.9.1:3478,198.18.9.2:3478", "[::1]:1,[::2]:1", "1.1.1.1:1,[::1]:1,2.2.2.2:1"):
        with pytest.raises(InvalidRelay, match="at most one IPv4 and one IPv6"):
            parse_relay_arg(bad)
    with pytest.raises(InvalidRelay, match="IP:PORT"):
        parse_relay_arg("198.18.9.1:3478,")
    with pytest.raises(InvalidRelay, match="at least one"):
        parse_addrs([])
    with pytest.raises(InvalidRelay, match="strings"):
        parse_addrs([3478])
