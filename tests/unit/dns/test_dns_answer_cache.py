"""Sans-I/O pieces: what a response means, and the cache's TTL and LRU rules."""

from __future__ import annotations

import ipaddress

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.dns.answer import Chase, Failure, Negative, Positive, interpret
from gateway_pkg.dns.cache import RecordCache

A = dns.rdatatype.A
NAME = dns.name.from_text("app.test.")


def response(*answer, authority=(), rcode=dns.rcode.NOERROR):
    message = dns.message.make_response(dns.message.make_query(NAME, A))
    message.set_rcode(rcode)
    message.answer.extend(answer)
    message.authority.extend(authority)
    return message


def soa(ttl, minimum):
    return dns.rrset.from_text("test.", ttl, "IN", "SOA", f"ns.test. a.test. 1 2 3 4 {minimum}")


def test_positive_with_cname_chain_takes_minimum_ttl():
    r = response(
        dns.rrset.from_text("app.test.", 50, "IN", "CNAME", "b.test."),
        dns.rrset.from_text("b.test.", 9, "IN", "CNAME", "c.test."),
        dns.rrset.from_text("c.test.", 70, "IN", "A", "192.0.2.1"),
    )
    assert interpret(r, NAME, A) == Positive((ipaddress.IPv4Address("192.0.2.1"),), 9.0)


def test_negative_answers():
    assert interpret(response(authority=[soa(10, 3)], rcode=dns.rcode.NXDOMAIN), NAME, A) == (Negative("nxdomain", 3.0))
    assert interpret(response(authority=[soa(2, 30)]), NAME, A) == Negative("nodata", 2.0)
    assert interpret(response(rcode=dns.rcode.NXDOMAIN), NAME, A) == Negative("nxdomain", None)
    assert interpret(response(), NAME, A) == Negative("nodata", None)


def test_soa_of_an_unrelated_zone_does_not_count():
    other = dns.rrset.from_text("other.", 10, "IN", "SOA", "ns.other. a.other. 1 2 3 4 5")
    assert interpret(response(authority=[other]), NAME, A) == Negative("nodata", None)


def test_unfinished_chain_is_chased_and_failures_are_failures():
    r = response(dns.rrset.from_text("app.test.", 7, "IN", "CNAME", "b.test."))
    assert interpret(r, NAME, A) == Chase(dns.name.from_text("b.test."), 7.0)
    assert interpret(response(rcode=dns.rcode.SERVFAIL), NAME, A) == Failure("SERVFAIL")


@given(st.floats(0, 10**7), st.floats(0, 10**5), st.floats(0, 10**6))
def test_clamp_stays_in_bounds(ttl, low, span):
    cache = RecordCache(10, low, low + span, 0)
    assert low <= cache.clamp(ttl) <= low + span


@given(st.integers(1, 20), st.lists(st.integers(0, 40), max_size=200))
def test_lru_matches_a_model(capacity, keys):
    cache, model = RecordCache(capacity, 0, 100, 0), []
    for k in keys:
        key = (f"n{k}", 1)
        if cache.get(key) is None:
            cache.store_positive(key, (), 50, 0.0)
        if key in model:
            model.remove(key)
        model.append(key)
        del model[:-capacity]
        assert len(cache) == len(model) <= capacity
    assert all(cache.peek(key) is not None for key in model)


def test_negative_without_soa_is_not_stored():
    cache = RecordCache(10, 0, 100, 0)
    entry = cache.store_negative(("x", 1), "nxdomain", None, 5.0)
    assert entry.negative == "nxdomain" and len(cache) == 0
