import json

from gateway_pkg import hostsetup


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
            rules.remove(tuple(rest))
        return 0


def test_rules_are_inserted_first_and_masquerade_is_source_restricted():
    fake = FakeIptables()
    fake.chains[("iptables", "filter", "FORWARD")] = [("-j", "DROP")]
    changed = hostsetup.apply_rules(["eth0"], runner=fake)
    assert len(changed) == 6
    forward = fake.chains[("iptables", "filter", "FORWARD")]
    assert forward[-1] == ("-j", "DROP")  # our accepts come before the distribution's drop
    masquerade = ("-s", "100.64.0.0/11", "-o", "eth0", "-j", "MASQUERADE")
    assert fake.chains[("iptables", "nat", "POSTROUTING")] == [masquerade]
    assert fake.chains[("ip6tables", "nat", "POSTROUTING")][0][1] == "fd00:2021:1111::/107"


def test_second_run_changes_nothing_and_remove_cleans_up():
    fake = FakeIptables()
    hostsetup.apply_rules(["eth0", "wlan0"], runner=fake)
    assert hostsetup.apply_rules(["eth0", "wlan0"], runner=fake) == []
    removed = hostsetup.apply_rules(["eth0", "wlan0"], runner=fake, remove=True)
    assert len(removed) == 8
    assert all(rules == [] for rules in fake.chains.values())


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
