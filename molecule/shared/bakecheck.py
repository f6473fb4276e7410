#!/usr/bin/env python3
"""Image baking (molecule/bake), driven from the controller inside `molecule verify`:

1. the host converged with `firezone_gateway_enroll: false` has the gateway installed, the
   service enabled and not started (not failed either), the token's path unit active, and no
   token, no FIREZONE_ID file and no FIREZONE_ID in the env file;
2. it is baked as docs/ansible.md ("Images") says: /etc/machine-id emptied (and a copy in
   /var/lib/dbus removed unless it is the link to it), then `podman commit`;
3. two clones of the image start on the scenario's network; neither starts the gateway while
   it has no token; then the token is written into each (through stdin, never argv), the path
   unit starts the service, firezone-gateway-init writes the ID, and each joins the lab's dev
   portal. The two IDs differ, and each is the one upstream derives from that clone's own
   machine-id (`systemd-id128 --app-specific=753b38f9f96947ef8083802d5909a372 machine-id`).

The clones and the image are removed at the end, whatever happened.

Environment: the one `molecule verify` gives its playbooks, and E2E_GATEWAY_TOKEN (the token
the lab's dev portal accepts).
"""

from __future__ import annotations

import os
import sys
import time

from labcheck import CheckFailed, Lab, podman, sh, wait_for

from gateway_pkg.config import external_id_for

NET, NETWORK = "10.89.64", "fz-e2e-bake"
LAB, BAKED = "fz-e2e-bake-lab", "fz-e2e-bake-gw1"
IMAGE = "localhost/fz-e2e-bake-image:latest"
CLONES = {"fz-e2e-bake-clone1": f"{NET}.41", "fz-e2e-bake-clone2": f"{NET}.42"}
UNIT, WATCH = "firezone-gateway.service", "firezone-gateway-token.path"
TOKEN_PATH, ENV_PATH = "/etc/firezone/gateway-token", "/etc/firezone/gateway-env"
ID_PATH = "/var/lib/firezone/gateway_id"
ID_APP = "753b38f9f96947ef8083802d5909a372"  # upstream 1.4.18's app-specific key
SYSCTLS = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.src_valid_mark=1", "net.ipv6.conf.all.disable_ipv6=0",
           "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.forwarding=1"]


def say(message: str) -> None:
    print(message, flush=True)


def state(container: str, unit: str) -> str:
    return sh(container, "systemctl", "is-active", unit, check=False).stdout.strip()


def exists(container: str, path: str) -> bool:
    return sh(container, "test", "-e", path, check=False).returncode == 0


def check_baked_host() -> None:
    say(f"== 1. {BAKED}, converged with firezone_gateway_enroll: false")
    problems = []
    if sh(BAKED, "systemctl", "is-enabled", UNIT, check=False).stdout.strip() != "enabled":
        problems.append(f"{UNIT} is not enabled")
    if state(BAKED, UNIT) != "inactive":
        problems.append(f"{UNIT} is {state(BAKED, UNIT)}, not inactive")
    if state(BAKED, WATCH) != "active":
        problems.append(f"{WATCH} is {state(BAKED, WATCH)}, not active")
    for path in (TOKEN_PATH, ID_PATH):
        if exists(BAKED, path):
            problems.append(f"{path} exists")
    if "FIREZONE_ID=" in sh(BAKED, "cat", ENV_PATH).stdout:
        problems.append(f"{ENV_PATH} sets FIREZONE_ID")
    if problems:
        raise CheckFailed("; ".join(problems))
    say(f"   installed, {UNIT} enabled and inactive, {WATCH} active; no token, no ID")


def bake() -> None:
    say(f"== 2. bake {IMAGE} from {BAKED}: empty /etc/machine-id, then podman commit")
    sh(BAKED, "sh", "-ec", ": > /etc/machine-id; [ -L /var/lib/dbus/machine-id ] || rm -f /var/lib/dbus/machine-id")
    podman("commit", "--quiet", BAKED, IMAGE, timeout=300)


def start_clone(name: str, ip: str) -> None:
    podman("run", "--detach", "--name", name, "--hostname", name, "--network", NETWORK, "--ip", ip,
           "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun", *[f"--sysctl={s}" for s in SYSCTLS],
           "--label", "e2e_scenario=bake", IMAGE, "/lib/systemd/systemd", timeout=120)
    wait_for(lambda: state(name, WATCH) == "active", 60, f"{name}: {WATCH} active")


def enrol(name: str, token: str) -> str:
    if state(name, UNIT) != "inactive" or exists(name, ID_PATH):
        raise CheckFailed(f"{name}: the gateway started, or an ID exists, before the token came")
    started = time.monotonic()
    sh(name, "sh", "-ec", f"umask 077; cat > {TOKEN_PATH}.new; chmod 0400 {TOKEN_PATH}.new; "
                          f"mv {TOKEN_PATH}.new {TOKEN_PATH}", stdin=token)
    wait_for(lambda: state(name, UNIT) == "active", 30, f"{name}: {UNIT} started by {WATCH}")
    fzid = wait_for(lambda: sh(name, "cat", ID_PATH, check=False).stdout.strip(), 30, f"{name}: {ID_PATH}")
    expected = sh(name, "systemd-id128", f"--app-specific={ID_APP}", "machine-id").stdout.strip()
    if fzid != expected:
        raise CheckFailed(f"{name}: FIREZONE_ID {fzid} is not the one derived from its machine-id ({expected})")
    say(f"   {name}: token written, {UNIT} active after {time.monotonic() - started:.1f} s, "
        f"FIREZONE_ID {fzid} (from its machine-id)")
    return fzid


def main() -> int:
    token = os.environ.get("E2E_GATEWAY_TOKEN", "")
    if len(token) < 8:
        say("FAILED: set E2E_GATEWAY_TOKEN (the token the lab's dev portal accepts)")
        return 1
    try:
        check_baked_host()
        bake()
        say(f"== 3. two clones of {IMAGE}")
        for name, ip in CLONES.items():
            start_clone(name, ip)
        ids = {name: enrol(name, token) for name in CLONES}
        if len(set(ids.values())) != len(CLONES):
            raise CheckFailed(f"the clones share a FIREZONE_ID: {ids}")
        lab = Lab(LAB, "", NET)
        # The portal knows a gateway by the ID it sends: a UUID-shaped ID (as derived here) is
        # sent as its SHA-256 hex, as upstream does.
        sent = {name: external_id_for(fzid) for name, fzid in ids.items()}

        def all_joined() -> bool:
            joined = {g.get("external_id") for g in lab.gateways() if g.get("joined")}
            return set(sent.values()) <= joined

        wait_for(all_joined, 30, "both clones joined the dev portal")
        say(f"   two different IDs, both joined the dev portal: {', '.join(ids.values())}")
    except CheckFailed as error:
        say(f"FAILED: {error}")
        for name in CLONES:
            journal = sh(name, "journalctl", "-u", UNIT, "-n", "30", "--no-pager", "-o", "cat", check=False).stdout
            say(f"---- journalctl -u {UNIT} on {name} (last 30 lines)\n{journal.rstrip()}")
        return 1
    finally:
        for name in CLONES:
            podman("rm", "--force", "--time", "5", name, check=False, timeout=60)
        podman("rmi", "--force", IMAGE, check=False, timeout=60)
    say("image baking verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
