#!/usr/bin/env python3
"""The fleet behaviour (molecule/fleet), driven from the controller inside `molecule verify`:

1. after the initial rollout: every host joined the lab's dev portal with its own FIREZONE_ID;
   then a run with a new pin but without firezone_gateway_upgrade changes nothing on any host
   (each says it keeps its version), in at most 15 remote tasks per host (the run's time is
   printed beside the first converge's);
2. an upgrade (firezone_gateway_upgrade=true) to another package version through
   playbooks/site.yml with serial=2 rolls batch by batch (two "Roll out" plays; every host of
   batch 1 restarted before batch 2 started) and keeps every FIREZONE_ID and token;
3. a rollout of a third version with serial=1 where the second host is broken (a host var
   points it at a portal address nothing listens on, so the role's readiness check fails):
   the first host runs the new version, the broken host is rolled back to the previous one
   and to the env file it had before the run, the rollout stops and the third host is not
   touched;
4. a run at the old pin on the rolled-back host (without the broken portal address) changes
   nothing and does not restart it: the unit names no version, so the rollback left it right;
5. a token rotation on the first host through playbooks/site.yml (--limit, the new token in an
   extra-vars file, never on a command line): the token file changes, the gateway restarts
   and rejoins, the ID stays, and neither token is in the output of any site.yml run.

The client-visible gap of a planned restart (molecule/shared/outage.py): the client is
connected through the first host to the cidr resource NET.11 and pings it every 0.2 s during
the upgrade (2.) and the rotation (5.), asking for the flow again as a client does once the
restarted gateway has rejoined with its new key. The longest time without a reply must stay
under 5 s for that host.

Environment: the one `molecule verify` gives its playbooks (MOLECULE_* and ANSIBLE_CONFIG), and
E2E_GATEWAY_TOKEN / E2E_GATEWAY_TOKEN_NEXT (the inventory's token and the one the rotation moves to).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import outage
from labcheck import CheckFailed, Lab, sh

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
INVENTORY = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
NET = "10.89.62"
LAB, CLIENT = "fz-e2e-fleet-lab", "fz-e2e-fleet-client"
HOSTS = ["fz-e2e-fleet-gw1", "fz-e2e-fleet-gw2", "fz-e2e-fleet-gw3"]


def say(message: str) -> None:
    print(message, flush=True)


def fail(message: str) -> None:
    say(f"FAILED: {message}")
    sys.exit(1)


def x(host: str, script: str) -> str:
    done = subprocess.run(["podman", "exec", host, "sh", "-c", script], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def state(host: str) -> dict[str, str]:
    pid = x(host, "systemctl show -P MainPID firezone-gateway.service")
    return {
        "id": x(host, "cat /var/lib/firezone/gateway_id"),
        "token_sha256": x(host, "sha256sum /etc/firezone/gateway-token | cut -d' ' -f1"),
        "current": x(host, "readlink /opt/firezone-gateway/current"),
        "previous": x(host, "readlink /opt/firezone-gateway/previous"),
        # The version the running process logged at its start (/proc/<pid>/exe needs ptrace rights).
        "running": x(host, f"journalctl -o cat _PID={pid} | grep -m1 'started logging'")
        if pid not in ("", "0") else "",
        "started": x(host, "systemctl show -P ExecMainStartTimestampMonotonic firezone-gateway.service"),
        "active": x(host, "systemctl is-active firezone-gateway.service"),
        "env_sha256": x(host, "sha256sum /etc/firezone/gateway-env | cut -d' ' -f1"),
        "unit_sha256": x(host, "sha256sum /etc/systemd/system/firezone-gateway.service | cut -d' ' -f1"),
    }


def joined() -> dict[str, str]:
    out = EPHEMERAL / "fleet-joined.json"
    done = subprocess.run([sys.executable, str(HERE / "labcheck.py"), "--lab", LAB, "--client", CLIENT, "--net", NET,
                           "--no-tunnel", "--json", str(out), *[f"--gateway={h}" for h in HOSTS]],
                          capture_output=True, text=True, check=False)
    say(done.stdout.rstrip())
    if done.returncode != 0:
        fail(f"not every gateway joined the dev portal:\n{done.stdout}{done.stderr}")
    return {r["gateway"]: r["firezone_id"] for r in json.loads(out.read_text())}


def site(label: str, *extra: str) -> tuple[int, str]:
    say(f"== {label}: ansible-playbook playbooks/site.yml {' '.join(extra)}")
    started = time.monotonic()
    done = subprocess.run(["ansible-playbook", f"--inventory={INVENTORY}", *extra, str(ROOT / "playbooks/site.yml")],
                          capture_output=True, text=True, check=False)
    out = done.stdout + done.stderr
    (EPHEMERAL / f"{label}.log").write_text(out)
    recap = out[out.rfind("PLAY RECAP"):].strip().splitlines()
    say("\n".join(line for line in recap if "ok=" in line))
    say(f"   rc={done.returncode} in {time.monotonic() - started:.0f} s (log: {EPHEMERAL}/{label}.log)")
    return done.returncode, out


def timings() -> list[dict[str, object]]:
    """The runs tools/callback_plugins/converge_timer.py logged so far: converge first."""
    path = EPHEMERAL / "converge-timing.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def changed(out: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(fz-e2e-fleet-gw\d)\s+: ok=\d+\s+changed=(\d+)", out)}


def wheelhouse(version: str) -> str:
    out = ROOT / ".cache/e2e" / f"wheelhouse-{version}"
    subprocess.run([str(HERE / "build_bumped_wheelhouse.sh"), version, str(out)], check=True)
    return str(out)


def report_lines(out: str) -> list[str]:
    return [line.strip(" -'\"") for line in out.splitlines() if re.search(r"fz-e2e-fleet-gw\d\s", line)]


def gap_during(lab: Lab, check: outage.GatewayCheck, resource: dict[str, object], what: str,
               run: Callable[[], tuple[int, str]]) -> tuple[int, str, float]:
    """`run()` with the client pinging through `check`'s gateway; its result and the longest gap."""
    prober = outage.Prober(lab, f"{NET}.11", what)
    alive = sh(CLIENT, "ping", "-q", "-c", "2", "-i", "0.2", "-W", "1", f"{NET}.11", check=False).returncode == 0
    reconnect = outage.Reconnect(lab, check, resource, force=not alive)
    try:
        prober.start()
        start = time.time()
        rc, out = run()
        end = time.time()
        gap = outage.planned_gap(prober, start, end, f"{what} of {check.container}")
    except CheckFailed as error:
        fail(f"{what}: {error}")
    finally:
        prober.stop()
        reconnect.stop()
    if reconnect.errors:
        fail(f"{what}: the client's reconnect failed: {reconnect.errors}")
    flows = [when for when, event in reconnect.events if event.startswith("wg0 peer ->")]
    say(f"   {what}: the client asked for its flow again {len(flows)} time(s) (the gateway's new key)")
    return rc, out, gap


def rotation(lab: Lab, check: outage.GatewayCheck, resource: dict[str, object], ids: dict[str, str], version: str,
             house: str) -> None:
    say(f"== 5. token rotation on {HOSTS[0]} (site.yml --limit, the new token from an extra-vars file)")
    tokens = [os.environ.get("E2E_GATEWAY_TOKEN", ""), os.environ.get("E2E_GATEWAY_TOKEN_NEXT", "")]
    if not all(len(t) >= 8 for t in tokens):
        fail("set E2E_GATEWAY_TOKEN and E2E_GATEWAY_TOKEN_NEXT (the inventory's tokens) for the rotation")
    extra = EPHEMERAL / "rotate-token.json"
    extra.touch(mode=0o600)
    extra.write_text(json.dumps({"firezone_gateway_token": tokens[1]}))
    was = state(HOSTS[0])
    rc, _, gap = gap_during(lab, check, resource, "rotation", lambda: site(
        "rotate", "--limit", HOSTS[0], "-e", f"@{extra}", "-e", f"firezone_gateway_version={version}",
        "-e", f"firezone_gateway_wheelhouse_dir={house}"))
    extra.unlink()
    now = state(HOSTS[0])
    logs = sorted(EPHEMERAL.glob("*.log"))  # ansible.log and the output of each site.yml run
    leaked = [p.name for p in logs if any(t in p.read_text(errors="replace") for t in tokens)]
    checks = {
        "the rotation run passed": rc == 0,
        "the token file changed": now["token_sha256"] != was["token_sha256"],
        "the gateway restarted": now["started"] != was["started"] and now["active"] == "active",
        "same version, same ID": now["current"] == was["current"] == version and now["id"] == was["id"],
        f"client-visible gap under {outage.PLANNED_LIMIT:g} s": gap < outage.PLANNED_LIMIT,
        f"neither token in the output of any site.yml run or ansible.log ({len(logs)} files)": not leaked,
    }
    for what, ok in checks.items():
        say(f"   {'ok  ' if ok else 'FAIL'} {what}")
    if not all(checks.values()):
        fail(f"the token rotation did not behave (token in: {leaked or 'none'})")
    if joined() != ids:
        fail("IDs in the dev portal changed with the rotation")


def main() -> int:
    base = os.environ.get("E2E_VERSION", "0.1.0")
    up1, up2 = f"{base}.post1", f"{base}.post2"

    say("== 1. initial rollout: every host joined with a distinct FIREZONE_ID")
    ids = joined()
    before = {h: state(h) for h in HOSTS}
    if len(set(ids.values())) != len(HOSTS) or any(ids[h] != before[h]["id"] for h in HOSTS):
        fail(f"IDs not distinct or not the hosts' own: {ids}")
    for h in HOSTS:
        say(f"   {h}: FIREZONE_ID {before[h]['id']}  version {before[h]['current']}")
    lab = Lab(LAB, CLIENT, NET)
    try:
        check, resource, _ = outage.ensure_tunnel(lab, HOSTS[0])
    except CheckFailed as error:
        fail(f"the client's tunnel through {HOSTS[0]}: {error}")

    say(f"== 1b. a new pin {up1} without firezone_gateway_upgrade: no host changes")
    house1 = wheelhouse(up1)
    rc, out = site("new-pin", "-e", "firezone_gateway_serial=3", "-e", f"firezone_gateway_version={up1}",
                   "-e", f"firezone_gateway_wheelhouse_dir={house1}")
    unchanged = {h: state(h) for h in HOSTS}
    if rc != 0 or changed(out) != {h: 0 for h in HOSTS} or unchanged != before:
        fail(f"a new pin without firezone_gateway_upgrade changed the fleet (rc={rc}, changed={changed(out)})")
    keeps = rf"keeps\s+{re.escape(base)}:\s+firezone_gateway_version\s+is\s+{re.escape(up1)}"
    if len(re.findall(keeps, out)) != len(HOSTS):
        fail("not every host said it keeps its version")
    runs = timings()
    if len(runs) < 2 or runs[-1]["changed"] != 0 or max(runs[-1]["remote_tasks"].values()) > 15:  # type: ignore[attr-defined]
        fail(f"the no-change run made more than 15 remote tasks on a host: {runs[-1:]}")
    say(f"   changed=0 everywhere, every host keeps {base}; first converge {runs[0]['seconds']} s on "
        f"{runs[0]['hosts']} hosts (target <= 90 s), this no-change run {runs[-1]['seconds']} s (target <= 45 s), "
        f"{max(runs[-1]['remote_tasks'].values())} remote tasks per host at most (limit 15)")  # type: ignore[attr-defined]

    say(f"== 2. upgrade {base} -> {up1}, serial=2")
    rc, out, gap = gap_during(lab, check, resource, "upgrade", lambda: site(
        "upgrade", "-e", "firezone_gateway_serial=2", "-e", f"firezone_gateway_version={up1}",
        "-e", "firezone_gateway_upgrade=true", "-e", f"firezone_gateway_wheelhouse_dir={house1}"))
    if rc != 0:
        fail("the upgrade failed")
    if gap >= outage.PLANNED_LIMIT:
        fail(f"the rolling upgrade interrupted the client for {gap:.2f} s, not under {outage.PLANNED_LIMIT:g} s")
    batches = out.count("PLAY [Roll out the Firezone Gateway]")
    after = {h: state(h) for h in HOSTS}
    for h in HOSTS:
        a, b = after[h], before[h]
        say(f"   {h}: {b['current']} -> {a['current']} (running {a['running']}), ID kept: {a['id'] == b['id']}, "
            f"token kept: {a['token_sha256'] == b['token_sha256']}, previous {a['previous']}")
        if a["current"] != up1 or up1 not in a["running"]:
            fail(f"{h} does not run {up1}: {a}")
        if a["id"] != b["id"] or a["token_sha256"] != b["token_sha256"]:
            fail(f"{h} lost its FIREZONE_ID or token: {b} -> {a}")
        if a["unit_sha256"] != b["unit_sha256"]:
            fail(f"{h}: the upgrade rewrote the unit file (it must not name the version)")
    if batches != 2:
        fail(f"expected 2 batches (serial=2, 3 hosts), saw {batches} 'Roll out' plays")
    first, second = [int(after[h]["started"]) for h in HOSTS[:2]], int(after[HOSTS[2]]["started"])
    if not max(first) < second:
        fail(f"batch 2 restarted before batch 1 finished: {first} vs {second}")
    say(f"   2 batches; batch 1 restarted {(second - max(first)) / 1e6:.0f} s before batch 2")
    if joined() != ids:
        fail("IDs in the dev portal changed with the upgrade")

    say(f"== 3. rollout of {up2}, serial=1, {HOSTS[1]} broken (portal address with nothing listening)")
    broken = EPHEMERAL / "broken-host.yml"
    broken.write_text(f"all:\n  hosts:\n    {HOSTS[1]}:\n      firezone_gateway_api_url: ws://{NET}.10:9\n"
                      "      firezone_gateway_verify_timeout: 15\n")
    house2 = wheelhouse(up2)
    rc, out = site("broken", f"--inventory={broken}", "-e", "firezone_gateway_serial=1",
                   "-e", "firezone_gateway_upgrade=true", "-e", f"firezone_gateway_version={up2}",
                   "-e", f"firezone_gateway_wheelhouse_dir={house2}")
    final = {h: state(h) for h in HOSTS}
    for line in report_lines(out)[-3:]:
        say(f"   report: {line}")
    for h in HOSTS:
        say(f"   {h}: current {final[h]['current']}, running {final[h]['running']}, {final[h]['active']}")
    checks = {
        "the rollout failed": rc != 0,
        "it says it stops": "The rollout stops here" in out,
        f"{HOSTS[0]} runs {up2}": final[HOSTS[0]]["current"] == up2
        and up2 in final[HOSTS[0]]["running"],
        f"{HOSTS[1]} rolled back to {up1}": final[HOSTS[1]]["current"] == up1
        and up1 in final[HOSTS[1]]["running"],
        f"{HOSTS[1]} has its env file from before the run back": final[HOSTS[1]]["env_sha256"]
        == after[HOSTS[1]]["env_sha256"],
        f"{HOSTS[1]} active after the rollback": final[HOSTS[1]]["active"] == "active",
        f"{HOSTS[2]} untouched": final[HOSTS[2]] == after[HOSTS[2]],
        "IDs kept": all(final[h]["id"] == before[h]["id"] for h in HOSTS),
    }
    for what, ok in checks.items():
        say(f"   {'ok  ' if ok else 'FAIL'} {what}")
    if not all(checks.values()):
        fail("the broken-host rollout did not behave")

    say(f"== 4. {HOSTS[1]} again at the old pin {up1}: no change, no restart")
    rc, out = site("old-pin", "--limit", HOSTS[1], "-e", f"firezone_gateway_version={up1}",
                   "-e", f"firezone_gateway_wheelhouse_dir={wheelhouse(up1)}")
    again = state(HOSTS[1])
    recap = re.search(rf"{HOSTS[1]}\s+: ok=\d+\s+changed=(\d+)", out)
    if rc != 0 or recap is None or recap.group(1) != "0" or again != final[HOSTS[1]]:
        fail(f"the run at the old pin changed {HOSTS[1]} (rc={rc}, changed={recap and recap.group(1)}): "
             f"{final[HOSTS[1]]} -> {again}")
    say("   changed=0, same unit, same process")

    rotation(lab, check, resource, ids, up2, house2)
    say("fleet behaviour verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
