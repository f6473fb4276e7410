import json

import pytest

from gateway_pkg import hostsetup
from gateway_pkg.netconst import ROUTE_TABLE


class FakeIptables:
    """Records rules per (tool, table, chain) as lists, like the kernel would."""

    def __init__(self):
        self.chains = {}
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        tool, _w, _t, table, op, chain, *rest = argv
        rules = self.chains.setdefault((tool, table, chain), [])
        if op == "-C":
            return 0 if tuple(rest) in rules else 1
        if op == "-I":
            rules.insert(int(rest[0]) - 1, tuple(rest[1:]))
        elif op == "-A":
            rules.append(tuple(rest))
        elif op == "-D":
            if tuple(rest) not in rules:
                return 1
            rules.remove(tuple(rest))
        return 0


class FakeHost(FakeIptables):
    """A host's rule set: iptables/ip6tables chains (with `-S`) and `ip rule` per family."""

    def __init__(self):
        super().__init__()
        self.ip_rules = {"-4": [], "-6": []}  # (priority, table, selector)
        self.broken = set()  # argv prefixes that fail, as tuples

    def _fails(self, argv):
        return any(tuple(argv[: len(prefix)]) == prefix for prefix in self.broken)

    def run(self, argv):
        self.calls.append(argv)
        if self._fails(argv):
            return 1
        if argv[0] == "ip":
            _ip, family, _rule, _del, *sel = argv
            want = dict(zip(sel[::2], sel[1::2], strict=True))
            for rule in self.ip_rules[family]:
                if str(rule[1]) == want["table"] and str(rule[0]) == want.get("priority", str(rule[0])):
                    self.ip_rules[family].remove(rule)
                    return 0
            return 2
        return self(argv)

    def read(self, argv):
        self.calls.append(argv)
        if self._fails(argv):
            raise hostsetup.SetupError(f"{' '.join(argv)}: Permission denied (you must be root)")
        if argv[0] == "ip":
            _ip, _j, family, _rule, _list, _table, table = argv
            return json.dumps([{"priority": p, "src": "all", "table": str(t)}
                               for p, t, _ in self.ip_rules[family] if str(t) == table])
        tool, _w, _t, table, op, chain = argv
        assert op == "-S"
        lines = [f"-P {chain} ACCEPT"] if chain in ("FORWARD", "POSTROUTING") else [f"-N {chain}"]
        lines += [" ".join(["-A", chain, *spec]) for spec in self.chains.get((tool, table, chain), [])]
        return "\n".join(lines) + "\n"

    def rules(self, tool, table, chain):
        return self.chains.get((tool, table, chain), [])


def test_rules_are_inserted_first_and_masquerade_is_source_restricted():
    fake = FakeIptables()
    fake.chains[("iptables", "filter", "FORWARD")] = [("-j", "DROP")]
    changed = hostsetup.apply_rules(["eth0"], runner=fake)
    assert len(changed) == 10  # per tool: 2 FORWARD accepts, 2 INPUT accepts, 1 MASQUERADE
    forward = fake.chains[("iptables", "filter", "FORWARD")]
    assert forward[-1] == ("-j", "DROP")  # our accepts come before the distribution's drop
    masquerade = ("-s", "100.64.0.0/11", "-o", "eth0", "-j", "MASQUERADE")
    assert fake.chains[("iptables", "nat", "POSTROUTING")] == [masquerade]
    assert fake.chains[("ip6tables", "nat", "POSTROUTING")][0][1] == "fd00:2021:1111::/107"


def test_the_tun_dns_server_port_is_accepted_first_on_the_tun_device_only():
    fake = FakeIptables()
    fake.chains[("iptables", "filter", "INPUT")] = [("-j", "DROP")]  # a host firewall's default deny
    fake.chains[("ip6tables", "filter", "INPUT")] = [("-j", "DROP")]
    hostsetup.apply_rules(["eth0"], runner=fake)
    for tool in ("iptables", "ip6tables"):
        assert fake.chains[(tool, "filter", "INPUT")] == [
            ("-i", "tun-firezone", "-p", "tcp", "-m", "tcp", "--dport", "53535", "-j", "ACCEPT"),
            ("-i", "tun-firezone", "-p", "udp", "-m", "udp", "--dport", "53535", "-j", "ACCEPT"),
            ("-j", "DROP"),
        ]


def test_second_run_changes_nothing_and_remove_cleans_up():
    host = FakeHost()
    hostsetup.apply_rules(["eth0", "wlan0"], runner=host.run)
    assert hostsetup.apply_rules(["eth0", "wlan0"], runner=host.run) == []
    removed = hostsetup.remove_rules(host.run, host.read)
    assert len(removed.removed) == 12
    assert (removed.warnings, removed.errors) == ([], [])
    assert all(rules == [] for rules in host.chains.values())
    again = hostsetup.remove_rules(host.run, host.read)
    assert again.removed == [] and again.errors == []


def _docker_and_admin_rules(host):
    docker = ("-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE")
    admin_accept = ("-i", "docker0", "-j", "ACCEPT")
    admin_tun = ("-i", "tun-firezone", "-o", "eth0", "-j", "ACCEPT")  # an admin's, narrower: not ours
    v6_other = ("-s", "fd00:dead::/64", "-o", "eth0", "-j", "MASQUERADE")
    host.chains.setdefault(("iptables", "nat", "POSTROUTING"), []).append(docker)
    host.chains.setdefault(("iptables", "filter", "FORWARD"), []).extend([admin_accept, admin_tun, ("-j", "DROP")])
    host.chains.setdefault(("ip6tables", "nat", "POSTROUTING"), []).append(v6_other)
    return {("iptables", "nat", "POSTROUTING"): [docker],
            ("iptables", "filter", "FORWARD"): [admin_accept, admin_tun, ("-j", "DROP")],
            ("ip6tables", "nat", "POSTROUTING"): [v6_other],
            ("ip6tables", "filter", "FORWARD"): []}


def test_remove_takes_rules_for_gone_interfaces_and_keeps_everyone_elses():
    host = FakeHost()
    foreign = _docker_and_admin_rules(host)
    # Added while the default route went out of eth9 (gone now), then wlan0, and twice eth9.
    hostsetup.apply_rules(["eth9"], runner=host.run)
    hostsetup.apply_rules(["wlan0"], runner=host.run)
    host.chains[("iptables", "nat", "POSTROUTING")].append(
        ("-s", "100.64.0.0/11", "-o", "eth9", "-j", "MASQUERADE"))
    host.ip_rules["-4"] += [(1000, ROUTE_TABLE, "not fwmark"), (1000, ROUTE_TABLE, "not fwmark")]
    host.ip_rules["-6"] += [(1000, ROUTE_TABLE, "not fwmark")]
    host.ip_rules["-4"].append((32766, "main", "from all"))  # the kernel's own: kept

    result = hostsetup.remove_rules(host.run, host.read)

    assert result.errors == [] and result.warnings == []
    assert {key: host.rules(*key) for key in foreign} == foreign
    assert host.ip_rules == {"-4": [(32766, "main", "from all")], "-6": []}
    assert sum("MASQUERADE" in line and "-o eth9" in line for line in result.removed) == 3
    assert f"removed: ip -6 rule del priority 1000 table {ROUTE_TABLE}" in result.removed
    assert len(result.removed) == 8 + 3 + 2 + 3  # accepts, MASQUERADE (v4 x3, v6 x2), ip rules
    # Each removal is one line that names the rule.
    assert "removed: iptables -t filter -D FORWARD -i tun-firezone -j ACCEPT" in result.removed


def test_dry_run_lists_and_changes_nothing():
    host = FakeHost()
    hostsetup.apply_rules(["eth9"], runner=host.run)
    host.ip_rules["-4"].append((1000, ROUTE_TABLE, "not fwmark"))
    before = {key: list(rules) for key, rules in host.chains.items()}
    result = hostsetup.remove_rules(host.run, host.read, dry_run=True)
    assert len(result.removed) == 11
    assert all(line.startswith("would remove: ") for line in result.removed)
    assert host.chains == before
    assert host.ip_rules["-4"] == [(1000, ROUTE_TABLE, "not fwmark")]


def test_a_failing_table_is_reported_and_the_others_are_still_cleaned():
    host = FakeHost()
    hostsetup.apply_rules(["eth0"], runner=host.run)
    host.ip_rules["-4"].append((1000, ROUTE_TABLE, "not fwmark"))
    host.broken.add(("ip6tables", "-w", "-t", "nat"))
    result = hostsetup.remove_rules(host.run, host.read)
    assert len(result.errors) == 1 and "ip6tables -w -t nat -S POSTROUTING" in result.errors[0]
    assert host.rules("iptables", "nat", "POSTROUTING") == []
    assert host.rules("ip6tables", "filter", "FORWARD") == []
    assert host.rules("ip6tables", "nat", "POSTROUTING") != []  # could not be listed
    assert host.ip_rules["-4"] == []


@pytest.mark.parametrize(
    ("tool", "table", "chain", "line", "ours"),
    [
        ("iptables", "filter", "FORWARD", "-A FORWARD -o tun-firezone -j ACCEPT", True),
        ("iptables", "filter", "FORWARD", "-A FORWARD -i tun-firezone -j DROP", False),
        ("iptables", "filter", "FORWARD", "-A FORWARD -i tun-firezone0 -j ACCEPT", False),
        ("iptables", "filter", "INPUT", "-A INPUT -i tun-firezone -p udp -m udp --dport 53535 -j ACCEPT", True),
        ("ip6tables", "filter", "INPUT", "-A INPUT -i tun-firezone -p tcp -m tcp --dport 53535 -j ACCEPT", True),
        ("iptables", "filter", "INPUT", "-A INPUT -i tun-firezone -p udp -m udp --dport 53 -j ACCEPT", False),
        ("iptables", "filter", "INPUT", "-A INPUT -i eth0 -p udp -m udp --dport 53535 -j ACCEPT", False),
        ("iptables", "filter", "INPUT", "-A INPUT -i tun-firezone -j ACCEPT", False),
        ("iptables", "nat", "POSTROUTING", "-A POSTROUTING -s 100.64.0.0/11 -o ens3 -j MASQUERADE", True),
        ("iptables", "nat", "POSTROUTING", "-A POSTROUTING -s 100.64.0.0/10 -o ens3 -j MASQUERADE", False),
        ("iptables", "nat", "POSTROUTING", "-A POSTROUTING -s 100.64.0.0/11 ! -o ens3 -j MASQUERADE", False),
        ("iptables", "nat", "POSTROUTING", "-A POSTROUTING -s fd00:2021:1111::/107 -o e -j MASQUERADE", False),
        ("ip6tables", "nat", "POSTROUTING", "-A POSTROUTING -s fd00:2021:1111::/107 -o e -j MASQUERADE", True),
        ("iptables", "nat", "POSTROUTING",
         '-A POSTROUTING -s 100.64.0.0/11 -o ens3 -m comment --comment "kept by ops" -j MASQUERADE', False),
        ("iptables", "nat", "POSTROUTING", '-A POSTROUTING -m comment --comment "odd \' quote', False),
    ],
)
def test_only_exact_rules_of_the_gateway_are_ours(tool, table, chain, line, ours):
    assert bool(hostsetup.owned_rules(tool, table, chain, line)) is ours


def test_remove_needs_root_and_dry_run_needs_remove(monkeypatch, capsys):
    monkeypatch.setattr(hostsetup.os, "geteuid", lambda: 1000)
    assert hostsetup.main(["--remove"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "firezone-gateway-init: --remove needs root (it deletes iptables rules and ip rules)"
    with pytest.raises(SystemExit) as exc:
        hostsetup.main(["--dry-run"])
    assert exc.value.code == 2
    assert "--dry-run only goes with --remove" in capsys.readouterr().err


def test_with_json_logs_every_line_is_a_json_object(monkeypatch, capsys):
    import json

    monkeypatch.setenv("FIREZONE_LOG_FORMAT", "json")
    monkeypatch.setattr(hostsetup.os, "geteuid", lambda: 1000)
    assert hostsetup.main(["--remove"]) == 1
    doc = json.loads(capsys.readouterr().err)
    assert doc["level"] == "ERROR" and doc["target"] == "firezone-gateway-init"
    assert doc["message"] == "--remove needs root (it deletes iptables rules and ip rules)"


def test_main_prints_one_line_per_removal(monkeypatch, capsys):
    host = FakeHost()
    hostsetup.apply_rules(["gone0"], runner=host.run)
    host.ip_rules["-6"].append((1000, ROUTE_TABLE, "not fwmark"))
    monkeypatch.setattr(hostsetup.os, "geteuid", lambda: 0)
    real = hostsetup.remove_rules
    monkeypatch.setattr(hostsetup, "remove_rules", lambda **kw: real(host.run, host.read, **kw))
    assert hostsetup.main(["--remove", "--egress-interface", "eth0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 11
    assert all(line.startswith("firezone-gateway-init: removed: ") for line in out)
    assert hostsetup.main(["--remove"]) == 0
    assert capsys.readouterr().out.strip() == "firezone-gateway-init: nothing to remove: no rule of the gateway is left"


def test_default_route_interfaces():
    answers = {"-4": json.dumps([{"dst": "default", "dev": "eth0"}]),
               "-6": json.dumps([{"dst": "default", "dev": "eth0"}, {"dst": "default", "dev": "wg1"}])}
    assert hostsetup.default_route_interfaces(lambda argv: answers[argv[2]]) == ["eth0", "wg1"]


def test_sysctls_written_or_verified(tmp_path):
    for key in hostsetup.SYSCTLS:
        path = hostsetup.sysctl_path(key, tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("0\n")
    assert len(hostsetup.apply_sysctls(write=False, root=tmp_path)) == 4  # disable_ipv6=0 already right
    assert hostsetup.apply_sysctls(write=True, root=tmp_path) == []
    assert hostsetup.sysctl_path("net.ipv4.ip_forward", tmp_path).read_text().strip() == "1"
