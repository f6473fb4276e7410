"""DNS resource address patterns."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.tunnel.dns_match import domain_matches


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("app.example.com", "app.example.com", True),
        ("app.example.com", "APP.Example.COM.", True),
        ("app.example.com", "x.app.example.com", False),
        ("app.example.com", "example.com", False),
        ("*.corp.example", "corp.example", True),  # upstream: *.x also matches x
        ("*.corp.example", "a.corp.example", True),
        ("*.corp.example", "a.b.corp.example", False),  # * stays inside one label
        ("*.corp.example", "xcorp.example", False),
        ("**.corp.example", "corp.example", True),
        ("**.corp.example", "a.b.c.corp.example", True),
        ("**.corp.example", "evilcorp.example", False),
        ("?.example.com", "a.example.com", True),
        ("?.example.com", "ab.example.com", False),
        ("?.example.com", "example.com", False),
        ("app-??.example.com", "app-01.example.com", True),
        ("app-*.example.com", "app-frontend.example.com", True),
        ("app-*.example.com", "app-x.y.example.com", False),
        ("a.**.example.com", "a.b.c.example.com", True),
        ("a.**.example.com", "a.example.com", True),
        ("app+1.example.com", "app+1.example.com", True),  # regex characters are literal
        ("app.example.com", "appxexample.com", False),
        ("app.example.com", "", False),
    ],
)
def test_patterns(pattern, name, expected):
    assert domain_matches(pattern, name) is expected


@given(st.text(max_size=40), st.text(max_size=40))
def test_never_raises(pattern, name):
    assert domain_matches(pattern, name) in (True, False)
