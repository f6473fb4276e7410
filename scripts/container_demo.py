#!/usr/bin/env python3
"""The container demo: Ansible rolls the gateway out to two podman containers, and a
WireGuard client reaches both over ICE (one only through a TURN relay), proves they carry
traffic and follow DNS TTLs.

  scripts/container_demo.py [--keep] [--serial N]

1. builds the images if absent (tools/build_image.sh, tools/build_lab_image.sh; cached),
   the wheelhouse the role installs and the lab's wheels (dev portal, aioice);
2. starts the lab (dev portal, unbound serving lab.test., HTTP resources, coturn on
   10.89.70.10:3478 that the dev portal hands out as the relay: `lab_up.py --relay`), the
   client (wireguard-go, and tests/iceclient.py's aioice agent: `--ice-client`) and two
   plain Debian 12 systemd containers, unprivileged, on the podman network fz-demo
   (10.89.70.0/24);
3. runs `ansible-playbook playbooks/site.yml` against the two gateways, output shown live;
4. makes gateway 2 reachable only through the relay: iptables in gw2 drops UDP from the
   client and in the client drops UDP from gw2 (the demo's rules, not the role's); gw1
   stays directly reachable;
5. from the client, through each gateway: authorization via the dev portal API, ICE
   (aioice, controlling; candidates through the portal), WireGuard handshake over the
   nominated pair, a cidr resource (allowed port works, filtered port refused), a DNS
   resource whose record changes (the TTL with the flag on, the fixed legacy time with it
   off);
6. prints the summary table, with the path each tunnel took by the gateway's own /metrics,
   and removes the containers and network unless --keep.
Needs root, podman (scripts/e2e.sh or `apt-get install podman runc netavark aardvark-dns
debootstrap`) and .venv with ansible. Exit status 0 when every gateway passed and gw2's
tunnel went through the relay while gw1's did not.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from gateway_pkg.netconst import SYSCTLS

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "molecule" / "shared"
WORK = ROOT / ".cache" / "demo"
NET, NETWORK = "10.89.70", "fz-demo"
LAB, CLIENT, GATEWAYS = "fz-demo-lab", "fz-demo-client", ["fz-demo-gw1", "fz-demo-gw2"]
CLIENT_OCTET, GATEWAY_OCTET = 20, 31  # gateway i at NET.(31 + i)
RELAY_ONLY = GATEWAYS[1]  # no direct UDP between it and the client: its only path is the lab's coturn
# The path each tunnel must take, by the gateway's /metrics: srflx is direct too (a NAT or a
# peer-reflexive address on the way).
EXPECTED_PATHS = {GATEWAYS[0]: ("host", "srflx"), RELAY_ONLY: ("relay",)}
LEGACY_TTL = 10
T0 = time.monotonic()
timings: list[tuple[str, float]] = []


def step(title: str) -> None:
    print(f"\n\033[1m== [{time.monotonic() - T0:5.0f} s] {title}\033[0m", flush=True)


def run(*argv: str, capture: bool = False, env: dict[str, str] | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, text=True, capture_output=capture, env=env, check=False, cwd=ROOT)
    if check and done.returncode != 0:
        sys.exit(f"container_demo: {' '.join(argv[:3])} failed ({done.returncode})\n"
                 f"{(done.stdout or '')[-2000:]}{(done.stderr or '')[-2000:]}")
    return (done.stdout or "").strip()


def timed(label: str, started: float) -> None:
    timings.append((label, time.monotonic() - started))


def teardown() -> None:
    for name in [LAB, CLIENT, *GATEWAYS]:
        subprocess.run(["podman", "rm", "-f", "-t", "3", name], capture_output=True, check=False)
    subprocess.run(["podman", "network", "rm", NETWORK], capture_output=True, check=False)


def build(venv_bin: Path) -> tuple[str, str, str]:
    started = time.monotonic()
    step("images (built once, cached by recipe hash)")
    base = run("tools/build_image.sh", capture=True)
    lab = run("tools/build_lab_image.sh", capture=True)
    print(f"   gateway hosts: {base}\n   lab and client: {lab}")
    timed("images", started)
    started = time.monotonic()
    step("wheelhouse for the role, wheels for the lab (dev portal) and the client (aioice)")
    WORK.mkdir(parents=True, exist_ok=True)
    print("   " + run("tools/build_wheelhouse.sh", str(WORK / "wheelhouse"), capture=True).splitlines()[0])
    lab_wheels = WORK / "lab-wheels"
    if not lab_wheels.is_dir() or not any(lab_wheels.glob("aioice-*.whl")):
        # the dev portal for the lab, aioice for the client's ICE agent (tests/iceclient.py)
        run(str(venv_bin / "python"), "-m", "pip", "wheel", "-q", "--wheel-dir", str(lab_wheels),
            ".[devportal]", "aioice", capture=True)
    version = next(p.name.split("-")[1] for p in (WORK / "wheelhouse").glob("python*/firezone_gateway_py-*.whl"))
    timed("wheels", started)
    return base, lab, version


def start_containers(base: str, lab: str, token: str) -> None:
    started = time.monotonic()
    step(f"containers on podman network {NETWORK} ({NET}.0/24)")
    teardown()
    run("podman", "network", "create", "--subnet", f"{NET}.0/24", NETWORK, capture=True)
    common = ["--cap-add", "NET_ADMIN", "--device", "/dev/net/tun", "--network", NETWORK, "--label", "fz-demo=1"]
    hosts: list[tuple[str, str, int, list[str]]] = [(LAB, lab, 10, []), (CLIENT, lab, CLIENT_OCTET, [])]
    sysctls = [a for key, value in SYSCTLS.items() for a in ("--sysctl", f"{key}={value}")]
    hosts += [(gw, base, GATEWAY_OCTET + i, sysctls) for i, gw in enumerate(GATEWAYS)]
    for name, image, octet, extra in hosts:
        run("podman", "run", "-d", "--name", name, "--hostname", name, "--ip", f"{NET}.{octet}", *common, *extra,
            image, capture=True)
        print(f"   {name:16} {NET}.{octet:<4} {image}")
    for name, *_ in hosts:
        for _ in range(100):
            state = subprocess.run(["podman", "exec", name, "systemctl", "is-system-running"], capture_output=True,
                                   text=True, check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
    timed("containers", started)
    started = time.monotonic()
    step("lab: dev portal, unbound (lab.test.), HTTP resources, coturn; client: wireguard-go, aioice agent")
    print(run(sys.executable, str(SHARED / "lab_up.py"), "--lab", LAB, "--client", CLIENT, "--net", NET,
              "--wheels", str(WORK / "lab-wheels"), "--relay", "--ice-client", *[f"--gateway={g}" for g in GATEWAYS],
              capture=True, env=os.environ | {"E2E_GATEWAY_TOKEN": token}))
    timed("lab", started)


def rollout(venv_bin: Path, token: str, version: str, serial: str) -> None:
    started = time.monotonic()
    inventory = WORK / "inventory.yml"
    connection = {"ansible_connection": "containers.podman.podman", "ansible_python_interpreter": "/usr/bin/python3"}
    gateways = {g: connection for g in GATEWAYS}
    inventory.write_text(json.dumps({"firezone_gateways": {"hosts": gateways, "vars": {
        "firezone_gateway_api_url": f"ws://{NET}.10:8081",
        "firezone_gateway_version": version,
        "firezone_gateway_wheelhouse_dir": str(WORK / "wheelhouse"),
        "firezone_gateway_feature_flags_url": f"http://{NET}.10:8081/decide",
        "firezone_gateway_feature_flags_interval": 2,
        "firezone_gateway_extra_env": {"FIREZONE_DNS_LEGACY_TTL": str(LEGACY_TTL)},
        # The summary's path column reads the per-client series (opt-in, off by default).
        "firezone_gateway_metrics_per_client": True,
    }}}, indent=2))
    secret = WORK / "secret.yml"
    secret.touch(mode=0o600)
    secret.write_text(json.dumps({"firezone_gateway_token": token}))
    step(f"ansible-playbook playbooks/site.yml (serial={serial}) -> {', '.join(GATEWAYS)}")
    env = os.environ | {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "1",
                        # One line with the run's time and the role's remote task count.
                        "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "tools" / "callback_plugins"),
                        "ANSIBLE_CALLBACKS_ENABLED": "converge_timer"}
    code = subprocess.run([str(venv_bin / "ansible-playbook"), "-i", str(inventory), "-e", f"@{secret}",
                           "-e", f"firezone_gateway_serial={serial}", "playbooks/site.yml"],
                          cwd=ROOT, env=env, check=False).returncode
    timed("ansible rollout", started)
    if code != 0:
        for g in GATEWAYS:
            print(f"---- journalctl -u firezone-gateway on {g}")
            subprocess.run(["podman", "exec", g, "journalctl", "-u", "firezone-gateway", "-n", "40",
                            "--no-pager"], check=False)
        raise SystemExit(f"container_demo: the rollout failed (exit {code})")


def relay_only_rules() -> list[tuple[str, str]]:
    """(container, source) of the DROP rules that leave RELAY_ONLY no direct UDP path to the client."""
    gw = f"{NET}.{GATEWAY_OCTET + GATEWAYS.index(RELAY_ONLY)}"
    return [(RELAY_ONLY, f"{NET}.{CLIENT_OCTET}"), (CLIENT, gw)]


def isolate() -> None:
    step(f"{RELAY_ONLY}: reachable only through the relay (iptables: no UDP between it and {CLIENT})")
    for container, source in relay_only_rules():
        run("podman", "exec", container, "iptables", "-I", "INPUT", "1", "-s", source, "-p", "udp", "-j", "DROP")
        print(f"   {container:16} iptables -I INPUT 1 -s {source} -p udp -j DROP")


def dropped(container: str, source: str) -> int:
    """Packets the isolation rule in `container` dropped: the direct ICE checks (-1: rule not found)."""
    out = run("podman", "exec", container, "iptables", "-nvxL", "INPUT", capture=True, check=False)
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[2] == "DROP" and fields[3] in ("udp", "17") and fields[7] == source:
            return int(fields[0])
    return -1


def checks() -> list[dict]:
    started = time.monotonic()
    step("over ICE, through the tunnel, from the client, for each gateway")
    out = WORK / "labcheck.json"
    subprocess.run([sys.executable, str(SHARED / "labcheck.py"), "--lab", LAB, "--client", CLIENT,
                    "--net", NET, "--dns", "--ice", "--legacy", str(LEGACY_TTL), "--json", str(out),
                    *[f"--gateway={g}" for g in GATEWAYS]], check=False)
    timed("tunnel and DNS checks", started)
    return json.loads(out.read_text())


def path_ok(result: dict) -> bool:
    return result.get("path") in EXPECTED_PATHS[result["gateway"]]


def table(results: list[dict]) -> bool:
    step("summary")
    yes = lambda v: "yes" if v else "NO"  # noqa: E731
    rows = [("gateway", "FIREZONE_ID", "joined", "tunnel OK", "path", "DNS TTL honoured", "security score")]
    for r in results:
        dns = "NO"
        if r.get("dns"):
            dns = f"yes (on: new after {r['dns_ttl_s']} s, TTL 8; off: {r['dns_legacy_s']} s, fixed {LEGACY_TTL})"
        path = r.get("path", "-")
        if not path_ok(r):
            path += f" (NO: expected {'/'.join(EXPECTED_PATHS[r['gateway']])})"
        rows.append((r["gateway"], r.get("firezone_id", "-"), yes(r.get("joined")), yes(r.get("tunnel")), path, dns,
                     f"{r['security']:.1f}" if "security" in r else "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print("path: the client's tunnel by the gateway's own /metrics (firezone_gateway_ice_client_path): host or srflx"
          "\n  is direct, relay is through coturn on the lab; the client reached each gateway over ICE (aioice).")
    for r in results:
        relay_bytes = r.get("relay_bytes") or {}
        print(f"  {r['gateway']}: client's selected pair {r.get('pair', '-')} (local -> remote candidate); relayed "
              f"WireGuard bytes in/out {relay_bytes.get('in', '-')}/{relay_bytes.get('out', '-')}")
    for container, source in relay_only_rules():
        print(f"  direct UDP from {source} dropped in {container}: {dropped(container, source)} packets "
              "(the direct ICE checks that could not pass)")
    print("security score: `systemd-analyze security firezone-gateway.service` on the host (0 = best, 10 = worst;"
          "\n  upstream's 1.4.17 unit: 3.7). Inside containers the namespace directives are not enforced.")
    for r in results:
        if r.get("error"):
            print(f"{r['gateway']}: {r['error']}")
        if not path_ok(r):
            print(f"{r['gateway']}: the tunnel took path {r.get('path', 'unknown')}, expected "
                  f"{' or '.join(EXPECTED_PATHS[r['gateway']])}")
    return all(r.get("joined") and r.get("tunnel") and r.get("dns") and path_ok(r) for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the containers running")
    parser.add_argument("--serial", default="2", help="site.yml batch size (default 2: both gateways at once)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("container_demo: run as root (podman with NET_ADMIN containers)")
    os.environ["CONTAINERS_CONF"] = str(ROOT / "tools" / "containers.conf")
    venv_bin = ROOT / ".venv" / "bin"
    os.environ["PATH"] = f"{venv_bin}:{os.environ['PATH']}"
    token = "demo-" + secrets.token_hex(16)
    ok = False
    try:
        base, lab, version = build(venv_bin)
        start_containers(base, lab, token)
        rollout(venv_bin, token, version, args.serial)
        isolate()
        ok = table(checks())
    finally:
        (WORK / "secret.yml").unlink(missing_ok=True)
        print("\ntimings: " + ", ".join(f"{label} {seconds:.0f} s" for label, seconds in timings)
              + f"; total {time.monotonic() - T0:.0f} s")
        if args.keep:
            print(f"\nkept: podman ps --filter label=fz-demo=1; podman exec -it {CLIENT} bash; "
                  f"dev portal http://{NET}.10:8081 (admin token in {LAB}:/opt/lab/admin-token), "
                  f"coturn {NET}.10:3478 (unit lab-turn);\n"
                  f"remove with: podman rm -f {LAB} {CLIENT} {' '.join(GATEWAYS)}; podman network rm {NETWORK}")
        else:
            teardown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
