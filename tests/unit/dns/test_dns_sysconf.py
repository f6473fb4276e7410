"""resolv.conf and hosts parsing, and the search-list order."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.dns.sysconf import HostsFile, ResolvConf, load_resolv_conf, parse_hosts, parse_resolv_conf


def test_parse_resolv_conf():
    conf = parse_resolv_conf(
        "# comment\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver bogus\n"
        "nameserver 192.0.2.2\nnameserver 192.0.2.3\n"
        "domain old.test\nsearch a.test b.test\noptions ndots:2 timeout:3 attempts:4 rotate\n"
    )
    assert conf.nameservers == (("192.0.2.1", 53), ("fe80::1", 53), ("192.0.2.2", 53))
    assert conf.search == ("a.test", "b.test")
    assert (conf.ndots, conf.timeout, conf.attempts) == (2, 3.0, 4)


def test_missing_file_and_explicit_nameservers(tmp_path):
    assert load_resolv_conf(str(tmp_path / "none")).nameservers == (("127.0.0.1", 53),)
    conf = load_resolv_conf(str(tmp_path / "none"), (("127.0.0.9", 5353),))
    assert conf.nameservers == (("127.0.0.9", 5353),)


def test_search_order_follows_ndots():
    conf = ResolvConf(search=("corp.test",), ndots=1)
    assert conf.candidates("app") == ["app.corp.test.", "app."]
    assert conf.candidates("app.example") == ["app.example.", "app.example.corp.test."]
    assert conf.candidates("app.example.") == ["app.example."]


@given(
    st.lists(st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True), max_size=3),
    st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True),
    st.integers(0, 4),
)
def test_candidates_are_absolute_and_include_the_name(search, name, ndots):
    candidates = ResolvConf(search=tuple(search), ndots=ndots).candidates(name)
    assert all(c.endswith(".") for c in candidates)
    assert f"{name}." in candidates


def test_parse_hosts():
    table = parse_hosts("127.0.0.1 localhost\n::1 localhost ip6-localhost\n192.0.2.5 App.Test. app # x\nbad x\n")
    assert table.v4["app.test"] == (ipaddress.IPv4Address("192.0.2.5"),)
    assert table.v6["localhost"] == (ipaddress.IPv6Address("::1"),)


def test_hosts_file_reloads_on_change_at_most_every_recheck(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("192.0.2.1 a.test\n")
    now = [0.0]
    hosts = HostsFile(str(path), lambda: now[0], recheck=5.0)
    assert "a.test" in hosts.current().v4
    path.write_text("192.0.2.2 b.test\n")
    import os

    os.utime(path, ns=(1, 1))
    assert "a.test" in hosts.current().v4  # not re-checked yet
    now[0] = 5.0
    assert "b.test" in hosts.current().v4
