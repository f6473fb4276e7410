#!/usr/bin/python
# -*- coding: utf-8 -*-
# Part of the firezone_gateway role. GNU General Public License v3.0+ (see COPYING or
# https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read, in one remote call, everything the role decides from: read-only, safe in check mode."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: firezone_gateway_probe
short_description: Read a gateway host's state for the firezone_gateway role in one call
description:
  - Reads the packages, the service account, the installed versions, the FIREZONE_ID file,
    the launcher, the live sysctls, /dev/net/tun, the service state and the forwarding rule.
  - Changes nothing; runs in check mode. The role decides from the result which of its tasks
    have anything to do, so a run that changes nothing is a handful of remote tasks.
options:
  packages:
    description: Debian packages whose installed state is reported.
    type: list
    elements: str
    default: []
  user:
    description: Service account name (passwd and group entries are reported; none without it).
    type: str
    default: ""
  install_root:
    description: Directory holding one virtualenv per version (with I(distribution) and I(launcher), they are reported).
    type: path
    default: ""
  current_link:
    description: The link naming the active version.
    type: path
    required: true
  previous_link:
    description: The link naming the rollback target.
    type: path
    required: true
  distribution:
    description: Distribution name whose installed version is read from each virtualenv.
    type: str
    default: ""
  launcher:
    description: The capability launcher interpreter, relative to a virtualenv (compared with its python3).
    type: str
    default: ""
  id_path:
    description: The FIREZONE_ID file.
    type: path
    required: true
  token_path:
    description: The token file (only its existence is reported, never its content).
    type: path
    default: ""
  sysctls:
    description: Sysctl names whose live values are read from /proc/sys.
    type: list
    elements: str
    default: []
  service:
    description: systemd unit whose ActiveState and UnitFileState are reported.
    type: str
    required: true
  watch:
    description: A second systemd unit (the token's path unit) whose states are reported as I(watch).
    type: str
    default: ""
  tun_name:
    description: The TUN interface; with I(check_forward), whether its FORWARD accept rule is in place.
    type: str
    required: true
  check_forward:
    description: Also run C(iptables -C FORWARD -i tun_name -j ACCEPT).
    type: bool
    default: false
author: firezone_gateway role maintainers
"""

RETURN = r"""
packages_missing: {description: Packages of I(packages) not installed, type: list, returned: always}
apt_lists: {description: Whether /var/lib/apt/lists holds downloaded package lists, type: bool, returned: always}
account: {description: "uid, gid, home, shell of I(user); group_gid of its group (null when absent)", type: dict, returned: always}
current: {description: Target of the current link (a version), or empty, type: str, returned: always}
previous: {description: Target of the previous link, or empty, type: str, returned: always}
versions:
  description:
    - "Version directories under install_root, newest first: {name, path, installed, python, launcher_ok}."
    - C(installed) is the distribution's version installed there (empty when none), C(python) whether
      its python3 exists, C(launcher_ok) whether the launcher is a copy of it with cap_net_admin=ep.
  type: list
  returned: always
id: {description: The FIREZONE_ID on the host (plain, or the id of upstream's JSON form), or empty, type: str, returned: always}
new_id: {description: A fresh 32-byte hex ID from the host's randomness, used only when the host has none, type: str, returned: always}
token_present: {description: Whether the token file exists and is not empty, type: bool, returned: always}
sysctls: {description: Live value of each requested sysctl (null when unreadable), type: dict, returned: always}
tun: {description: "/dev/net/tun: {char: bool, mode: '0666'}", type: dict, returned: always}
service: {description: "{active: ActiveState, enabled: UnitFileState}", type: dict, returned: always}
watch: {description: "The same for I(watch) (empty strings without it)", type: dict, returned: always}
forward_rule: {description: Whether the FORWARD accept rule is in place (with check_forward), type: bool, returned: always}
"""

import glob
import grp
import hashlib
import json
import os
import pwd
import secrets
import stat
import subprocess

from ansible.module_utils.basic import AnsibleModule


def _run(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return 127, ""
    return done.returncode, done.stdout


def _packages_missing(names):
    if not names:
        return []
    code, out = _run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n"] + list(names))
    installed = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("ii"):
            installed.add(parts[0].split(":")[0])
    return [name for name in names if name not in installed]


def _account(user):
    found = {"uid": None, "gid": None, "home": None, "shell": None, "group_gid": None}
    try:
        entry = pwd.getpwnam(user)
        found.update(uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir, shell=entry.pw_shell)
    except KeyError:
        pass
    try:
        found["group_gid"] = grp.getgrnam(user).gr_gid
    except KeyError:
        pass
    return found


def _installed_version(venv, distribution):
    prefix = distribution.replace("-", "_") + "-"
    for path in glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", prefix + "*.dist-info")):
        name = os.path.basename(path)[len(prefix):-len(".dist-info")]
        if os.path.isfile(os.path.join(path, "RECORD")):
            return name
    return ""


def _sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _has_cap_net_admin(path):
    code, out = _run(["getcap", path])
    return code == 0 and ("cap_net_admin=ep" in out or "cap_net_admin+ep" in out)


def _link(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def _versions(root, distribution, launcher):
    found = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return found
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, entry.path))
    versions = []
    for _, name, path in sorted(found, reverse=True):
        python_sum = _sha256(os.path.join(path, "bin", "python3"))
        launcher_path = os.path.join(path, launcher)
        versions.append({
            "name": name, "path": path, "installed": _installed_version(path, distribution),
            "python": python_sum is not None,
            "launcher_ok": (python_sum is not None and _sha256(launcher_path) == python_sum
                            and _has_cap_net_admin(launcher_path)),
        })
    return versions


def _read_id(path):
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    if raw.startswith("{"):
        try:
            value = json.loads(raw).get("id", "")
        except (ValueError, AttributeError):
            return ""
        return value if isinstance(value, str) else ""
    return raw


def _sysctl(name):
    try:
        with open("/proc/sys/" + name.replace(".", "/"), encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _tun():
    try:
        info = os.stat("/dev/net/tun")
    except OSError:
        return {"char": False, "mode": ""}
    return {"char": stat.S_ISCHR(info.st_mode), "mode": "%04o" % stat.S_IMODE(info.st_mode)}


def _service(unit):
    code, out = _run(["systemctl", "show", "--property=ActiveState,UnitFileState", unit])
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {"active": values.get("ActiveState", ""), "enabled": values.get("UnitFileState", "")}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            packages=dict(type="list", elements="str", default=[]),
            user=dict(type="str", default=""),
            install_root=dict(type="path", default=""),
            current_link=dict(type="path", required=True),
            previous_link=dict(type="path", required=True),
            distribution=dict(type="str", default=""),
            launcher=dict(type="str", default=""),
            id_path=dict(type="path", required=True),
            token_path=dict(type="path", default=""),
            sysctls=dict(type="list", elements="str", default=[]),
            service=dict(type="str", required=True),
            tun_name=dict(type="str", required=True),
            watch=dict(type="str", default=""),
            check_forward=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        token_present = bool(p["token_path"]) and os.path.getsize(p["token_path"]) > 0
    except OSError:
        token_present = False
    forward = False
    if p["check_forward"]:
        code, _ = _run(["iptables", "-w", "-C", "FORWARD", "-i", p["tun_name"], "-j", "ACCEPT"])
        forward = code == 0
    module.exit_json(
        changed=False,
        packages_missing=_packages_missing(p["packages"]),
        apt_lists=bool(glob.glob("/var/lib/apt/lists/*_Packages*")),
        account=_account(p["user"]) if p["user"] else {},
        current=_link(p["current_link"]),
        previous=_link(p["previous_link"]),
        versions=(_versions(p["install_root"], p["distribution"], p["launcher"])
                  if p["install_root"] and p["distribution"] and p["launcher"] else []),
        id=_read_id(p["id_path"]),
        new_id=secrets.token_hex(32),
        token_present=token_present,
        sysctls={name: _sysctl(name) for name in p["sysctls"]},
        tun=_tun(),
        service=_service(p["service"]),
        watch=_service(p["watch"]) if p["watch"] else {"active": "", "enabled": ""},
        forward_rule=forward,
    )


if __name__ == "__main__":
    main()
