"""Which hosts the role supports, and the wheelhouse each host installs from.

Debian 12 runs Python 3.11 and Debian 13 Python 3.13; the role installs a host from the
wheelhouse built for its Python (tools/build_wheelhouse.sh makes one per Python), and refuses
every other system in preflight with the reason. The role's preflight and its wheelhouse
tasks run for real (ansible-playbook, local connection) on hosts whose facts say which
release they are, with their install paths in a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.ansible.test_role_preflight import LOCAL, SYSTEMD_HOST_TASKS, failure, host_results, run

VERSION = "0.1.0"

PLAYBOOK = """\
---
- name: Preflight and the wheelhouse copy, on hosts that say which release they run
  hosts: all
  gather_facts: false
  tasks:
""" + SYSTEMD_HOST_TASKS + """\
    - name: Say which release it runs
      ansible.builtin.set_fact:
        ansible_facts: >-
          {{ ansible_facts | combine({'distribution': fz_distribution, 'distribution_major_version': fz_major,
                                      'distribution_version': fz_major}) }}

    - name: Preflight
      ansible.builtin.include_role:
        name: firezone_gateway
        tasks_from: preflight
      vars: &paths
        __firezone_gateway_token_path: "{{ fz_dir }}/gateway-token"
        __firezone_gateway_id_path: "{{ fz_dir }}/gateway_id"

    - name: Decided
      ansible.builtin.debug:
        msg: "python={{ __firezone_gateway_python }} wheelhouse={{ __firezone_gateway_wheelhouse }}"

    - name: Copy and verify the wheelhouse (install's own tasks, into a temporary virtualenv path)
      ansible.builtin.include_role:
        name: firezone_gateway
        tasks_from: install_wheelhouse
      vars: *paths
      when: fz_copy
"""


def wheelhouse(directory: Path, *tags: str) -> Path:
    """A wheelhouse holding our wheel and one dependency per tag, with its SHA256SUMS."""
    directory.mkdir(parents=True)
    names = [f"firezone_gateway_py-{VERSION}-cp311-abi3-linux_x86_64.whl"] + [f"cffi-2.0-{t}-{t}-linux_x86_64.whl"
                                                                            for t in tags]
    lines = []
    for name in names:
        (directory / name).write_bytes(name.encode())
        lines.append(f"{hashlib.sha256(name.encode()).hexdigest()}  {name}")
    (directory / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return directory


def host(tmp_path: Path, name: str, distribution: str, major: str, house: Path, copy: bool = False) -> dict[str, Any]:
    work = tmp_path / name
    (work / "opt" / VERSION).mkdir(parents=True)
    return {**LOCAL, "fz_dir": str(work), "fz_distribution": distribution, "fz_major": major, "fz_copy": copy,
            "firezone_gateway_token": "t", "firezone_gateway_version": VERSION,
            "firezone_gateway_install_root": str(work / "opt"), "firezone_gateway_wheelhouse_dir": str(house)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("platforms")
    both = tmp_path / "both"
    wheelhouse(both / "python3.11", "cp311")
    wheelhouse(both / "python3.13", "cp313")
    only311 = tmp_path / "only311"
    wheelhouse(only311 / "python3.11", "cp311")
    flat = wheelhouse(tmp_path / "flat", "cp311")
    copy = os.geteuid() == 0  # the archive is unpacked as root:root
    hosts = {
        "bookworm": host(tmp_path, "bookworm", "Debian", "12", both, copy),
        "trixie": host(tmp_path, "trixie", "Debian", "13", both, copy),
        "bookworm_flat": host(tmp_path, "bookworm_flat", "Debian", "12", flat),
        "trixie_missing": host(tmp_path, "trixie_missing", "Debian", "13", only311),
        "bullseye": host(tmp_path, "bullseye", "Debian", "11", both),
        "ubuntu": host(tmp_path, "ubuntu", "Ubuntu", "24", both),
    }
    playbook = tmp_path / "platforms.yml"
    playbook.write_text(PLAYBOOK)
    done = run(playbook, {"all": {"hosts": hosts}}, tmp_path, "--forks", str(len(hosts)))
    return tmp_path, host_results(done.stdout)


def decision(results: list[tuple[str, dict[str, Any]]]) -> str:
    return dict(results)["Decided"]["msg"]


def test_each_release_installs_from_the_wheelhouse_of_its_python(runs: tuple[Path, dict[str, Any]]) -> None:
    tmp_path, ran = runs
    assert decision(ran["bookworm"]) == f"python=3.11 wheelhouse={tmp_path}/both/python3.11"
    assert decision(ran["trixie"]) == f"python=3.13 wheelhouse={tmp_path}/both/python3.13"
    # A wheelhouse of one Python, built the way older versions did (SHA256SUMS at the top).
    assert decision(ran["bookworm_flat"]) == f"python=3.11 wheelhouse={tmp_path}/flat"
    for name in ("bookworm", "trixie", "bookworm_flat"):
        assert failure(ran[name]) == ("", ""), (name, failure(ran[name]))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the wheels are unpacked as root:root")
def test_a_mixed_batch_gets_each_host_its_own_wheels(runs: tuple[Path, dict[str, Any]]) -> None:
    tmp_path, ran = runs
    # Each wheelhouse of the batch is verified on the controller once (the one that failed
    # preflight's checks is left out), and packed once.
    verify = "Preflight | Verify the wheels against SHA256SUMS on the controller"
    runs_of_it = [dict(results)[verify] for name, results in ran.items()
                  if name != "__stats__" and verify in dict(results) and "results" in dict(results)[verify]]
    assert len(runs_of_it) == 1, runs_of_it
    checked = [r["item"] for r in runs_of_it[0]["results"]]
    assert sorted(checked) == [f"{tmp_path}/both/python3.11", f"{tmp_path}/both/python3.13", f"{tmp_path}/flat"]
    for name, tag in (("bookworm", "cp311"), ("trixie", "cp313")):
        copied = tmp_path / name / "opt" / VERSION / "wheelhouse"
        assert sorted(p.name for p in copied.iterdir()) == sorted(
            [f"firezone_gateway_py-{VERSION}-cp311-abi3-linux_x86_64.whl", f"cffi-2.0-{tag}-{tag}-linux_x86_64.whl"])
        assert "Install | Require every copied wheel to match the controller's SHA256SUMS" in dict(ran[name])


def test_a_host_without_a_wheelhouse_for_its_python_is_told_how_to_build_one(
        runs: tuple[Path, dict[str, Any]]) -> None:
    tmp_path, ran = runs
    task, message = failure(ran["trixie_missing"])
    assert task == "Preflight | Require the wheelhouse for the host's Python on the controller", (task, message)
    assert f"No wheelhouse for Python 3.13 (trixie_missing runs Debian 13) at {tmp_path}/only311/python3.13" in message
    assert f"tools/build_wheelhouse.sh {tmp_path}/only311" in message
    assert message.endswith("Nothing was changed on this host."), message
    assert ran["__stats__"]["trixie_missing"]["changed"] == 0


@pytest.mark.parametrize(("name", "system"), [("bullseye", "Debian 11"), ("ubuntu", "Ubuntu 24")])
def test_other_systems_are_refused_with_the_supported_list(runs: tuple[Path, dict[str, Any]], name: str,
                                                           system: str) -> None:
    _, ran = runs
    task, message = failure(ran[name])
    assert task == "Preflight | Refuse unsupported hosts", (task, message)
    assert f"{name} runs {system}; the firezone_gateway role supports only Debian 12, Debian 13." in message
    assert ran["__stats__"][name]["changed"] == 0
