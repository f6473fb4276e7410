"""The DNS and feature-flag settings, read through the settings table: defaults, every
variable, and one clear line per mistake."""

from __future__ import annotations

import pytest

from gateway_pkg import config
from gateway_pkg.dns.settings import DnsSettings, FlagSettings
from gateway_pkg.errors import ConfigError

BASE = {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "gw"}


def load(environ):
    return config.load(BASE | environ)


def test_defaults():
    cfg = load({})
    s, f = cfg.dns, cfg.flags
    assert f.url is None and f.interval == 300 and f.no_telemetry is False
    assert f.userspace_dns_override is None and not f.fetching_enabled
    assert (s.cache_size, s.min_ttl, s.max_ttl, s.max_stale_age) == (10_000, 0, 86_400, 86_400)
    assert s.legacy_ttl == 30
    assert (s.resolv_conf, s.hosts_file, s.nameservers) == ("/etc/resolv.conf", "/etc/hosts", ())
    # The parts built without a Config (tests, benchmarks) get the same defaults.
    assert (DnsSettings(), FlagSettings()) == (s, f)


def test_every_variable():
    cfg = load(
        {
            "FIREZONE_FEATURE_FLAGS_URL": "http://127.0.0.1:8081/decide",
            "FIREZONE_FEATURE_FLAGS_INTERVAL": "2.5",
            "FIREZONE_NO_TELEMETRY": "true",
            "FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS": "TRUE",
            "FIREZONE_DNS_CACHE_SIZE": "512",
            "FIREZONE_DNS_MIN_TTL": "5",
            "FIREZONE_DNS_MAX_TTL": "3600",
            "FIREZONE_DNS_MAX_STALE": "0",
            "FIREZONE_DNS_RESOLV_CONF": "/tmp/r.conf",
            "FIREZONE_DNS_HOSTS_FILE": "/tmp/hosts",
            "FIREZONE_DNS_NAMESERVERS": "127.0.0.9:5353, [::1]:53, 192.0.2.1",
        }
    )
    s, f = cfg.dns, cfg.flags
    assert f.url == "http://127.0.0.1:8081/decide"
    assert f.interval == 2.5
    assert f.no_telemetry is True and not f.fetching_enabled
    assert f.userspace_dns_override is True
    assert (s.cache_size, s.min_ttl, s.max_ttl, s.max_stale_age) == (512, 5, 3600, 0)
    assert (s.resolv_conf, s.hosts_file) == ("/tmp/r.conf", "/tmp/hosts")
    assert s.nameservers == (("127.0.0.9", 5353), ("::1", 53), ("192.0.2.1", 53))


def test_flags_are_fetched_with_a_url_and_telemetry_on():
    assert load({"FIREZONE_FEATURE_FLAGS_URL": "https://flags.example/decide"}).flags.fetching_enabled


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "F"])
def test_falsey_no_telemetry_keeps_telemetry_on(value):
    assert load({"FIREZONE_NO_TELEMETRY": value}).flags.no_telemetry is False


def test_override_false_and_empty():
    key = "FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS"
    assert load({key: "false"}).flags.userspace_dns_override is False
    assert load({key: ""}).flags.userspace_dns_override is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS": "yes"}, "must be true or false"),
        ({"FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS": "1"}, "must be true or false"),
        ({"FIREZONE_DNS_MIN_TTL": "ten"}, "FIREZONE_DNS_MIN_TTL must be a number"),
        ({"FIREZONE_DNS_MAX_TTL": "-1"}, "FIREZONE_DNS_MAX_TTL must be a finite"),
        ({"FIREZONE_DNS_MAX_TTL": "inf"}, "FIREZONE_DNS_MAX_TTL must be a finite"),
        ({"FIREZONE_DNS_MIN_TTL": "60", "FIREZONE_DNS_MAX_TTL": "30"}, "must not exceed"),
        ({"FIREZONE_DNS_CACHE_SIZE": "0"}, "positive integer"),
        ({"FIREZONE_DNS_CACHE_SIZE": "1e4"}, "positive integer"),
        ({"FIREZONE_FEATURE_FLAGS_INTERVAL": "0"}, "positive number"),
        ({"FIREZONE_FEATURE_FLAGS_URL": "ftp://x/decide"}, "http:// or https://"),
        ({"FIREZONE_DNS_NAMESERVERS": "dns.example"}, "not an IP address"),
        ({"FIREZONE_DNS_NAMESERVERS": "127.0.0.1:99999"}, "invalid port"),
    ],
)
def test_mistakes_are_one_line_config_errors(environ, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load(environ)
    assert "\n" not in str(raised.value)
    assert raised.value.exit_status == 2
