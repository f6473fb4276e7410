"""`firezone-gateway-init` for real, in a fresh network namespace: `--remove` takes every rule
the gateway added (also for an egress interface that is gone) and its ip rules, and nothing
of anyone else's."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from gateway_pkg.netconst import FIREZONE_MARK, ROUTE_TABLE, TUN_NAME, TUNNEL_V4, TUNNEL_V6
from tests.netlab import sh
from tests.procs import VENV_BIN, base_env

pytestmark = [pytest.mark.integration, pytest.mark.netns]

INIT = str(VENV_BIN / "firezone-gateway-init")
# Someone else's rules in the same tables (Docker's masquerade and accept, an admin's ip rule).
FOREIGN = [
    ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
     "-j", "MASQUERADE"],
    ["iptables", "-w", "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"],
    ["ip6tables", "-w", "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"],
    ["ip", "-4", "rule", "add", "from", "10.9.9.0/24", "table", "100", "priority", "500"],
]


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    for tool in ("ip", "iptables", "ip6tables"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (run `make deps`)")
    name = f"fzinit-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def init(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, INIT, *args], capture_output=True, text=True,
                          env=base_env(), check=False, timeout=60)


def rulesets(ns: str) -> str:
    """Everything a user would look at: both tools' chains and both families' ip rules."""
    out = []
    for tool in ("iptables", "ip6tables"):
        out.append(sh(tool, "-w", "-S", "FORWARD", ns=ns))
        out.append(sh(tool, "-w", "-t", "nat", "-S", "POSTROUTING", ns=ns))
    out.append(sh("ip", "-4", "rule", "show", ns=ns))
    out.append(sh("ip", "-6", "rule", "show", ns=ns))
    return "".join(out)


def test_remove_takes_every_rule_of_ours_even_for_a_gone_interface(netns: str) -> None:
    ns = netns
    for argv in (["ip", "link", "set", "lo", "up"],
                 # A stand-in uplink (a veth pair: this kernel may lack the dummy driver).
                 ["ip", "link", "add", "uplink9", "type", "veth", "peer", "name", "uplink9p"],
                 ["ip", "link", "set", "uplink9p", "up"],
                 ["ip", "link", "set", "uplink9", "up"],
                 ["ip", "addr", "add", "192.0.2.2/24", "dev", "uplink9"],
                 ["ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "uplink9", "nodad"],
                 ["ip", "route", "add", "default", "via", "192.0.2.1", "dev", "uplink9"],
                 ["ip", "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "uplink9"],
                 *FOREIGN):
        sh(*argv, ns=ns)

    added = init(ns)  # egress: the default routes' interface, uplink9
    assert added.returncode == 0, added.stderr
    before = rulesets(ns)
    assert f"-A POSTROUTING -s {TUNNEL_V4} -o uplink9 -j MASQUERADE" in before
    assert f"-A POSTROUTING -s {TUNNEL_V6} -o uplink9 -j MASQUERADE" in before
    assert f"-A FORWARD -i {TUN_NAME} -j ACCEPT" in before
    # The policy rules a gateway that was killed leaves behind (it adds them at start).
    for family in ("-4", "-6"):
        sh("ip", family, "rule", "add", "not", "fwmark", hex(FIREZONE_MARK), "table", str(ROUTE_TABLE),
           "priority", "1000", ns=ns)
    assert str(ROUTE_TABLE) in sh("ip", "-6", "rule", "show", ns=ns)

    # The egress interface goes away (a renamed NIC, a moved default route): no default route now.
    sh("ip", "link", "del", "uplink9", ns=ns)
    removed = init(ns, "--remove")

    assert removed.returncode == 0, removed.stderr
    assert removed.stderr == ""
    after = rulesets(ns)
    for ours in (TUN_NAME, TUNNEL_V4, TUNNEL_V6, str(ROUTE_TABLE)):
        assert ours not in after, after
    for foreign in ("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                    "-A FORWARD -i docker0 -j ACCEPT", "from 10.9.9.0/24 lookup 100"):
        assert foreign in after, after
    assert after.count("-A FORWARD -i docker0 -j ACCEPT") == 2  # iptables and ip6tables
    lines = removed.stdout.splitlines()
    # per tool: 2 FORWARD accepts, 2 INPUT accepts (TUN DNS server, UDP and TCP) and 1 MASQUERADE;
    # 1 ip rule per family
    assert len(lines) == 4 + 4 + 2 + 2
    assert all(line.startswith("firezone-gateway-init: removed: ") for line in lines), lines
    assert f"firezone-gateway-init: removed: iptables -t nat -D POSTROUTING -s {TUNNEL_V4} -o uplink9 " \
           "-j MASQUERADE" in lines

    again = init(ns, "--remove")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "firezone-gateway-init: nothing to remove: no rule of the gateway is left"
    assert rulesets(ns) == after


def test_dry_run_lists_without_removing(netns: str) -> None:
    ns = netns
    sh("ip", "link", "set", "lo", "up", ns=ns)
    assert init(ns, "--no-sysctl", "--egress-interface", "gone7").returncode == 0
    before = rulesets(ns)
    dry = init(ns, "--remove", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert len(dry.stdout.splitlines()) == 10  # per tool 2 FORWARD + 2 INPUT accepts + 1 MASQUERADE
    assert all(" would remove: " in line for line in dry.stdout.splitlines())
    assert rulesets(ns) == before
