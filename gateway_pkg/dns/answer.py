"""What one DNS response means for an A or AAAA lookup, and for how long (sans-I/O).

TTL rules (hickory's and the RFCs'):
- a positive answer lives for the minimum TTL along the answer, CNAMEs included;
- a negative answer (NXDOMAIN, or NODATA: the name exists without this type) lives
  for min(SOA TTL, SOA MINIMUM) of the SOA in the authority section (RFC 2308 §5),
  and is not cached at all without one (RFC 2308 §5: "MUST NOT be cached");
- a chain that ends in a CNAME whose target the server did not include (unbound's
  local-data, for one, does not chase) is followed by asking for the target.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_CNAME_HOPS = 8  # hickory and glibc stop chasing at a small fixed depth, too


@dataclass(frozen=True, slots=True)
class Positive:
    addresses: tuple[IPAddress, ...]
    ttl: float  # minimum along the chain, before clamping


@dataclass(frozen=True, slots=True)
class Negative:
    kind: Literal["nxdomain", "nodata"]
    ttl: float | None  # None: no SOA, so not cacheable


@dataclass(frozen=True, slots=True)
class Chase:
    """The answer ended at a CNAME target without data; ask for `target`."""

    target: dns.name.Name
    ttl: float  # minimum TTL of the CNAMEs so far


@dataclass(frozen=True, slots=True)
class Failure:
    """A response that says nothing about the name (SERVFAIL, REFUSED, ...)."""

    rcode: str


Interpretation = Positive | Negative | Chase | Failure


def interpret(response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Interpretation:
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Failure(dns.rcode.to_text(rcode))

    name, chain_ttl, hops = qname, float("inf"), 0
    while True:
        records = _find(response.answer, name, rdtype)
        if records is not None and len(records) > 0:
            addresses = tuple(ipaddress.ip_address(rdata.address) for rdata in records)
            return Positive(addresses, min(chain_ttl, float(records.ttl)))
        cname = _find(response.answer, name, dns.rdatatype.CNAME)
        if cname is None or len(cname) == 0 or hops >= MAX_CNAME_HOPS:
            break
        chain_ttl = min(chain_ttl, float(cname.ttl))
        name = cname[0].target
        hops += 1

    soa_ttl = _negative_ttl(response, name)
    if rcode == dns.rcode.NXDOMAIN:
        return Negative("nxdomain", None if soa_ttl is None else min(soa_ttl, chain_ttl))
    if soa_ttl is not None:
        return Negative("nodata", min(soa_ttl, chain_ttl))
    if name != qname:
        return Chase(name, chain_ttl)
    return Negative("nodata", None)


def _find(
    section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    # Class IN only: records of another class for the name are no answer to our IN query
    # (dnspython parses them as other rdata types, without the fields read here).
    for rrset in section:
        if rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN and rrset.name == name:
            return rrset
    return None


def _negative_ttl(response: dns.message.Message, name: dns.name.Name) -> float | None:
    """min(SOA TTL, SOA MINIMUM) of an SOA for `name` or one of its ancestors."""
    for rrset in response.authority:
        if (rrset.rdtype == dns.rdatatype.SOA and rrset.rdclass == dns.rdataclass.IN and len(rrset) > 0
                and name.is_subdomain(rrset.name)):
            return float(min(rrset.ttl, rrset[0].minimum))
    return None
