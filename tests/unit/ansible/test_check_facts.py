"""tools/check_facts.py: the role, Molecule, smoke scripts and demo agree with gateway_pkg/netconst.py."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_TOOL = REPO / "tools" / "check_facts.py"
_spec = importlib.util.spec_from_file_location("check_facts", _TOOL)
assert _spec is not None and _spec.loader is not None
checker = importlib.util.module_from_spec(_spec)
sys.modules["check_facts"] = checker
_spec.loader.exec_module(checker)

# What the checker reads, copied into a tmp tree that the tests then tamper with.
_FILES = [
    "gateway_pkg/__init__.py",
    "gateway_pkg/netconst.py",
    "gateway_pkg/settings.py",
    "scripts/container_demo.py",
    *(str(p.relative_to(REPO)) for p in REPO.glob("molecule/*/molecule.yml")),
    *(str(p.relative_to(REPO)) for p in REPO.glob("tools/smoke_*.sh")),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in _FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    shutil.copytree(REPO / "roles" / "firezone_gateway", tmp_path / "roles" / "firezone_gateway")
    # The settings rules as the copy's table wants them, so that each test sees only its own
    # tampering (test_the_repository_agrees catches a stale file in the repository).
    rules = tmp_path / "roles/firezone_gateway/vars/settings_rules.yml"
    rules.write_text(checker._rules_tool().generate(tmp_path)[0])
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_repository_agrees() -> None:
    done = subprocess.run([sys.executable, str(_TOOL)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ("role, Molecule, smoke and demo facts agree with gateway_pkg/netconst.py; "
                                   "the role's settings rules with gateway_pkg/settings.py")


def test_an_untouched_copy_agrees(tree: Path) -> None:
    assert checker.check(tree) == []


def test_a_tampered_copy_fails_with_one_line_per_mismatch(tree: Path) -> None:
    role_vars = tree / "roles/firezone_gateway/vars/main.yml"
    edit(role_vars, 'net.ipv4.ip_forward: "1"', 'net.ipv4.ip_forward: "0"')
    edit(role_vars, "__firezone_gateway_tun_name: tun-firezone", "__firezone_gateway_tun_name: tun-fz")
    edit(role_vars, "__firezone_gateway_route_table: 539098368", "__firezone_gateway_route_table: 539098369")
    edit(tree / "roles/firezone_gateway/defaults/main.yml", 'firezone_gateway_version: "0.1.0"',
         'firezone_gateway_version: "0.0.9"')
    edit(tree / "molecule/uninstall/molecule.yml", "--sysctl=net.ipv4.conf.all.src_valid_mark=1",
         "--sysctl=net.ipv4.conf.all.src_valid_mark=0")
    edit(tree / "tools/smoke_container.sh", "--sysctl net.ipv6.conf.default.forwarding=1",
         "--sysctl net.ipv6.conf.default.forwardin=1")

    done = subprocess.run([sys.executable, str(_TOOL), "--root", str(tree)], capture_output=True, text=True,
                          check=False)

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines == [
        "roles/firezone_gateway/vars/main.yml: __firezone_gateway_tun_name is 'tun-fz', "
        "gateway_pkg/netconst.py TUN_NAME is 'tun-firezone'",
        "roles/firezone_gateway/vars/main.yml: __firezone_gateway_route_table is 539098369, "
        "gateway_pkg/netconst.py ROUTE_TABLE is 539098368",
        "roles/firezone_gateway/vars/main.yml: __firezone_gateway_sysctls net.ipv4.ip_forward is '0', "
        "gateway_pkg/netconst.py SYSCTLS has '1'",
        "roles/firezone_gateway/defaults/main.yml: firezone_gateway_version is '0.0.9', "
        "gateway_pkg.__version__ is '0.1.0'",
        "molecule/uninstall/molecule.yml: --sysctl net.ipv4.conf.all.src_valid_mark=0, "
        "gateway_pkg/netconst.py SYSCTLS has '1'",
        "tools/smoke_container.sh: --sysctl net.ipv6.conf.default.forwardin is not in gateway_pkg/netconst.py SYSCTLS",
        "tools/smoke_container.sh: --sysctl net.ipv6.conf.default.forwarding=1 is missing "
        "(gateway_pkg/netconst.py SYSCTLS)",
    ]


def test_netconst_is_the_truth(tree: Path) -> None:
    # Changing the source of truth alone makes every copy a mismatch.
    edit(tree / "gateway_pkg/netconst.py", '"net.ipv4.ip_forward": "1"', '"net.ipv4.ip_forward": "2"')
    problems = checker.check(tree)
    assert "roles/firezone_gateway/vars/main.yml: __firezone_gateway_sysctls net.ipv4.ip_forward is '1', " \
           "gateway_pkg/netconst.py SYSCTLS has '2'" in problems
    assert sum("net.ipv4.ip_forward=1" in p for p in problems) == len(list(tree.glob("molecule/*/molecule.yml"))) \
        + len(list(tree.glob("tools/smoke_*.sh")))


def test_missing_and_extra_sysctls_and_hard_coded_facts(tree: Path) -> None:
    role_vars = tree / "roles/firezone_gateway/vars/main.yml"
    edit(role_vars, '  net.ipv6.conf.default.forwarding: "1"\n', '  net.ipv4.tcp_syncookies: "1"\n')
    edit(role_vars, "__firezone_gateway_tunnel_v6: fd00:2021:1111::/107\n", "")
    edit(tree / "roles/firezone_gateway/tasks/uninstall.yml", '"{{ __firezone_gateway_route_table }}"',
         '"539098368"')
    problems = checker.check(tree)
    assert "roles/firezone_gateway/vars/main.yml: __firezone_gateway_sysctls lacks " \
           "net.ipv6.conf.default.forwarding (gateway_pkg/netconst.py SYSCTLS has '1')" in problems
    assert "roles/firezone_gateway/vars/main.yml: __firezone_gateway_sysctls net.ipv4.tcp_syncookies is not in " \
           "gateway_pkg/netconst.py SYSCTLS" in problems
    assert "roles/firezone_gateway/vars/main.yml: __firezone_gateway_tunnel_v6 is missing " \
           "(gateway_pkg/netconst.py TUNNEL_V6 = 'fd00:2021:1111::/107')" in problems
    assert any(p.startswith("roles/firezone_gateway/tasks/uninstall.yml:") and "hard-coded 539098368" in p
               for p in problems)
    assert len(problems) == 4


def test_the_demo_must_import_the_sysctls(tree: Path) -> None:
    edit(tree / "scripts/container_demo.py", "from gateway_pkg.netconst import SYSCTLS\n",
         'SYSCTLS = {"net.ipv4.ip_forward": "1"}\nEXTRA = ["--sysctl", "net.ipv4.ip_forward=1"]\n')
    assert checker.check(tree) == [
        "scripts/container_demo.py: SYSCTLS must be imported from gateway_pkg.netconst, not written out",
        "scripts/container_demo.py: --sysctl net.ipv4.ip_forward=1 written out; build it from "
        "gateway_pkg.netconst SYSCTLS",
    ]


def test_the_settings_rules_follow_the_settings_table(tree: Path) -> None:
    # A new log level in the table makes the generated rules stale, and the check says so.
    edit(tree / "gateway_pkg/settings.py", 'LOG_LEVELS = ("trace", "debug", "info", "warn", "error")',
         'LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")')
    assert checker.check(tree) == [
        "roles/firezone_gateway/vars/settings_rules.yml is out of date: run tools/gen_role_validation.py"]
    # So does a hand edit of the generated file.
    edit(tree / "gateway_pkg/settings.py", ', "fatal")', ")")
    edit(tree / "roles/firezone_gateway/vars/settings_rules.yml", "must be human or json", "must be human")
    assert checker.check(tree) == [
        "roles/firezone_gateway/vars/settings_rules.yml is out of date: run tools/gen_role_validation.py"]
