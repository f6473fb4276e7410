#!/usr/bin/env python3
"""Bring up the e2e lab in running containers, from the controller, with podman cp/exec only
(one exec per container: Ansible's per-task cost through `podman exec` is about 3 s here).

  E2E_GATEWAY_TOKEN=... lab_up.py --lab C --client C --net 10.89.61 --wheels DIR [--gateway C ...]

- lab: the dev portal wheels (DIR, built by `pip wheel '.[devportal]'`), tokens and
  files/lab_setup.sh: dev portal, unbound with lab.test., HTTP resources (all systemd units).
- client: files/client_setup.sh: WireGuard keys and wg0 (wireguard-go).
- gateways: /etc/resolv.conf -> the lab's unbound (the gateway resolves DNS resources through
  its system configuration, as on a real host; unbound forwards all other names).
The gateway token comes from the environment (E2E_GATEWAY_TOKEN), never from the command line.
Used by molecule/shared/prepare.yml and scripts/container_demo.py.
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
ADMIN_TOKEN = "e2e-admin-token-3b9d0c5e"  # noqa: S105 - the lab's admin API; the lab is throwaway


def podman(*argv: str) -> str:
    done = subprocess.run(["podman", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"lab_up: podman {' '.join(argv[:3])}... failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def build_wheels(wheels: Path) -> None:
    if wheels.is_dir():
        return
    root = HERE.parent.parent
    tmp = wheels.with_name(wheels.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([str(root / ".venv/bin/python"), "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp),
                    f"{root}[devportal]"], check=True, stderr=subprocess.DEVNULL)
    tmp.rename(wheels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--gateway", action="append", default=[])
    parser.add_argument("--net", required=True)
    parser.add_argument("--wheels", required=True, type=Path)
    args = parser.parse_args()
    token = os.environ.get("E2E_GATEWAY_TOKEN", "")
    if not token:
        sys.exit("lab_up: set E2E_GATEWAY_TOKEN")
    build_wheels(args.wheels)

    with tempfile.TemporaryDirectory(prefix="fz-lab-") as tmp:
        stage = Path(tmp) / "lab"
        shutil.copytree(args.wheels, stage / "wheels")
        for name in ("lab_http.py", "lab_setup.sh"):
            shutil.copy2(HERE / "files" / name, stage / name)
        (stage / "gateway-tokens").write_text(token + "\n")
        (stage / "admin-token").write_text(ADMIN_TOKEN + "\n")
        (stage / "admin-header").write_text(f"Authorization: Bearer {ADMIN_TOKEN}\n")
        podman("exec", args.lab, "mkdir", "-p", "/opt/lab")
        podman("cp", f"{stage}/.", f"{args.lab}:/opt/lab/")
    print(podman("exec", "-e", f"E2E_NET={args.net}", args.lab, "/opt/lab/lab_setup.sh").strip())

    podman("cp", str(HERE / "files" / "client_setup.sh"), f"{args.client}:/usr/local/sbin/client_setup.sh")
    print(podman("exec", args.client, "/usr/local/sbin/client_setup.sh").strip())

    for gateway in args.gateway:
        # resolv.conf is a bind mount from podman: rewrite it in place.
        podman("exec", gateway, "sh", "-c", f"echo 'nameserver {args.net}.10' > /etc/resolv.conf")
        print(f"{gateway}: resolves through {args.net}.10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
