"""Network facts of the gateway, written once: the TUN device, the UDP port, the TUN DNS port,
the mark, the routing table, the tunnel ranges and the sysctls forwarding needs.

Everything that has to agree with the host (the Ansible role, the labs, the benchmarks,
`firezone-gateway-init`) takes these values from here; `tools/check_facts.py` proves that
the YAML and shell files outside Python still agree with them.
"""

from __future__ import annotations

import ipaddress
from typing import Final

# The TUN device (upstream: `tun-firezone`, MTU 1280, txqueuelen 10000).
TUN_NAME: Final = "tun-firezone"
TUN_PATH: Final = "/dev/net/tun"
TUN_MTU: Final = 1280
TUN_TXQUEUELEN: Final = 10_000

# The WireGuard/ICE UDP port: 49152 + 3473 ("FIRE" on a phone pad); ephemeral when taken.
DEFAULT_UDP_PORT: Final = 52625

# The TUN DNS server, UDP and TCP on the TUN addresses (upstream `TUN_DNS_PORT`): clients send
# it the non-A/AAAA queries (SRV, TXT) for the names of DNS resources.
TUN_DNS_PORT: Final = 53535

# The mark on every socket the gateway opens (UDP and the portal's TCP). The policy rule
# sends everything *not* carrying it into the gateway's own routing table.
FIREZONE_MARK: Final = 0xFD002021
ROUTE_TABLE: Final = 0x2021FD00
RULE_PRIORITY: Final = 1000

# The tunnel address ranges the portal assigns from (clients and the gateway itself).
TUNNEL_V4: Final = "100.64.0.0/11"
TUNNEL_V6: Final = "fd00:2021:1111::/107"
TUNNEL_NETWORKS: Final = (ipaddress.ip_network(TUNNEL_V4), ipaddress.ip_network(TUNNEL_V6))

# What forwarding between tun-firezone and the egress interfaces needs (upstream's init).
SYSCTLS: Final = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.src_valid_mark": "1",
    "net.ipv6.conf.all.disable_ipv6": "0",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.default.forwarding": "1",
}
