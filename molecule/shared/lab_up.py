#!/usr/bin/env python3
"""Bring up the e2e lab in running containers, from the controller, with podman cp/exec only
(one exec per container: Ansible's per-task cost through `podman exec` is about 3 s here).

  E2E_GATEWAY_TOKEN=... lab_up.py --lab C [--client C] --net 10.89.61 --wheels DIR [--gateway C ...]
                                  [--relay] [--ice-client]

- lab: the dev portal wheels (DIR, built by `pip wheel '.[devportal]'`), tokens and
  files/lab_setup.sh: dev portal, unbound with lab.test., HTTP resources (all systemd units).
- client (if given; the uninstall scenario has none): files/client_setup.sh: WireGuard keys and
  wg0 (wireguard-go).
- gateways: /etc/resolv.conf -> the lab's unbound (the gateway resolves DNS resources through
  its system configuration, as on a real host; unbound forwards all other names).
- with --relay (opt-in; the Molecule scenarios do not pass it), files/lab_relay.sh on the lab:
  coturn on NET.10:3478 with a random static auth secret, and the dev portal started with
  `--relay NET.10:3478 --turn-secret-file`, so gateways get the relay in `init`.
- with --ice-client (opt-in), files/client_ice_setup.sh on the client: /opt/ice with a venv
  holding aioice (from DIR, which then also gets the aioice wheels) and a copy of the
  repository's tests/iceclient.py, the agent that `labcheck.py --ice` drives.
The gateway token comes from the environment (E2E_GATEWAY_TOKEN), never from the command line;
E2E_GATEWAY_TOKEN_NEXT, when set, is a second token the dev portal accepts from the start (the
token a rotation moves to, as a real portal holds both while the fleet changes over).
Used by molecule/shared/prepare.yml and scripts/container_demo.py (which passes both flags).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# tests/iceclient.py and what it imports from tests/ (it runs as `python -m tests.iceclient`).
ICE_CLIENT_FILES = ("__init__.py", "iceclient.py", "netlab.py", "procs.py")
ADMIN_TOKEN = "e2e-admin-token-3b9d0c5e"  # noqa: S105 - the lab's admin API; the lab is throwaway


def podman(*argv: str) -> str:
    done = subprocess.run(["podman", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"lab_up: podman {' '.join(argv[:3])}... failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def build_wheels(wheels: Path, ice: bool = False) -> None:
    pip = [str(ROOT / ".venv/bin/python"), "-m", "pip", "wheel", "-q"]
    if not wheels.is_dir():
        tmp = wheels.with_name(wheels.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([*pip, "--wheel-dir", str(tmp), f"{ROOT}[devportal]", *(["aioice"] if ice else [])],
                       check=True, stderr=subprocess.DEVNULL)
        tmp.rename(wheels)
    elif ice and not any(wheels.glob("aioice-*.whl")):
        subprocess.run([*pip, "--wheel-dir", str(wheels), "aioice"], check=True, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", required=True)
    parser.add_argument("--client")
    parser.add_argument("--gateway", action="append", default=[])
    parser.add_argument("--net", required=True)
    parser.add_argument("--wheels", required=True, type=Path)
    parser.add_argument("--relay", action="store_true",
                        help="also coturn on the lab, handed out by the dev portal (--relay, --turn-secret-file)")
    parser.add_argument("--ice-client", action="store_true",
                        help="also the aioice agent (tests/iceclient.py) in the client, for labcheck.py --ice")
    args = parser.parse_args()
    if args.ice_client and not args.client:
        parser.error("--ice-client needs --client")
    token = os.environ.get("E2E_GATEWAY_TOKEN", "")
    if not token:
        sys.exit("lab_up: set E2E_GATEWAY_TOKEN")
    build_wheels(args.wheels, ice=args.ice_client)

    with tempfile.TemporaryDirectory(prefix="fz-lab-") as tmp:
        stage = Path(tmp) / "lab"
        shutil.copytree(args.wheels, stage / "wheels")
        for name in ("lab_http.py", "lab_setup.sh", *(["lab_relay.sh"] if args.relay else [])):
            shutil.copy2(HERE / "files" / name, stage / name)
        tokens = [token, *([os.environ["E2E_GATEWAY_TOKEN_NEXT"]] if os.environ.get("E2E_GATEWAY_TOKEN_NEXT") else [])]
        (stage / "gateway-tokens").write_text("".join(t + "\n" for t in tokens))
        (stage / "admin-token").write_text(ADMIN_TOKEN + "\n")
        (stage / "admin-header").write_text(f"Authorization: Bearer {ADMIN_TOKEN}\n")
        podman("exec", args.lab, "mkdir", "-p", "/opt/lab")
        podman("cp", f"{stage}/.", f"{args.lab}:/opt/lab/")
    print(podman("exec", "-e", f"E2E_NET={args.net}", args.lab, "/opt/lab/lab_setup.sh").strip())
    if args.relay:
        print(podman("exec", "-e", f"E2E_NET={args.net}", args.lab, "/opt/lab/lab_relay.sh").strip())

    if args.client:
        podman("cp", str(HERE / "files" / "client_setup.sh"), f"{args.client}:/usr/local/sbin/client_setup.sh")
        print(podman("exec", args.client, "/usr/local/sbin/client_setup.sh").strip())
    if args.ice_client:
        with tempfile.TemporaryDirectory(prefix="fz-ice-") as tmp:
            stage = Path(tmp) / "ice"
            shutil.copytree(args.wheels, stage / "wheels")
            (stage / "tests").mkdir()
            for name in ICE_CLIENT_FILES:
                shutil.copy2(ROOT / "tests" / name, stage / "tests" / name)
            shutil.copy2(HERE / "files" / "client_ice_setup.sh", stage / "client_ice_setup.sh")
            podman("exec", args.client, "mkdir", "-p", "/opt/ice")
            podman("cp", f"{stage}/.", f"{args.client}:/opt/ice/")
        print(podman("exec", args.client, "/opt/ice/client_ice_setup.sh").strip())

    for gateway in args.gateway:
        # resolv.conf is a bind mount from podman: rewrite it in place.
        podman("exec", gateway, "sh", "-c", f"echo 'nameserver {args.net}.10' > /etc/resolv.conf")
        print(f"{gateway}: resolves through {args.net}.10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
