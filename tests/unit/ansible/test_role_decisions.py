"""What preflight decides from the host's state: the token a host keeps, the version it runs.

The role's preflight runs for real (ansible-playbook, local connection, check mode) against
hosts whose install root and token file live in a temporary directory, and each host shows
the version the run would leave active.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.ansible.test_role_preflight import LOCAL, SYSTEMD_HOST_TASKS, failure, host_results, run

PLAYBOOK = """\
---
- name: Preflight against temporary paths
  hosts: all
  gather_facts: false
  tasks:
""" + SYSTEMD_HOST_TASKS + """\
    - name: Preflight
      ansible.builtin.include_role:
        name: firezone_gateway
        tasks_from: preflight
      vars:
        __firezone_gateway_token_path: "{{ fz_dir }}/gateway-token"
        __firezone_gateway_id_path: "{{ fz_dir }}/gateway_id"

    - name: Decided
      ansible.builtin.debug:
        msg: "version={{ __firezone_gateway_version }} install={{ __firezone_gateway_install_needed }}"
"""


def host(tmp_path: Path, name: str, current: str | None, token_file: bool, **variables: Any) -> dict[str, Any]:
    work = tmp_path / name
    (work / "opt").mkdir(parents=True)
    if current:
        (work / "opt" / current).mkdir()
        (work / "opt" / "current").symlink_to(current)
    if token_file:
        (work / "gateway-token").write_text("kept-token")
    return {**LOCAL, "fz_dir": str(work), "firezone_gateway_install_root": str(work / "opt"),
            "firezone_gateway_install_method": "index", **variables}


@pytest.fixture(scope="module")
def decided(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("decisions")
    token = {"firezone_gateway_token": "given-token"}
    hosts = {
        "fresh": host(tmp_path, "fresh", None, False, **token, firezone_gateway_version="0.1.1"),
        "pinned_newer": host(tmp_path, "pinned_newer", "0.1.0", True, **token, firezone_gateway_version="0.1.1"),
        "upgrade": host(tmp_path, "upgrade", "0.1.0", True, **token, firezone_gateway_version="0.1.1",
                        firezone_gateway_upgrade=True),
        "older_pin": host(tmp_path, "older_pin", "0.1.1", True, **token, firezone_gateway_version="0.1.0",
                          firezone_gateway_upgrade=True),
        "minor": host(tmp_path, "minor", "0.1.0", True, **token, firezone_gateway_version="0.2.0",
                      firezone_gateway_upgrade=True),
        "minor_allowed": host(tmp_path, "minor_allowed", "0.1.0", True, **token, firezone_gateway_version="0.2.0",
                              firezone_gateway_upgrade=True, firezone_gateway_upgrade_minor=True),
        "no_token_kept": host(tmp_path, "no_token_kept", "0.1.0", True, firezone_gateway_version="0.1.0"),
        "no_token_none": host(tmp_path, "no_token_none", None, False, firezone_gateway_version="0.1.0"),
        "bake": host(tmp_path, "bake", None, False, firezone_gateway_enroll=False),
        "bake_given_token": host(tmp_path, "bake_given_token", None, False, **token, firezone_gateway_enroll=False),
        "bake_enrolled_host": host(tmp_path, "bake_enrolled_host", "0.1.0", True, firezone_gateway_enroll=False),
    }
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(PLAYBOOK)
    done = run(playbook, {"all": {"hosts": hosts}}, tmp_path, "--check", "--forks", str(len(hosts)))
    return host_results(done.stdout)


def decision(results: list[tuple[str, dict[str, Any]]]) -> str:
    return dict(results)["Decided"]["msg"]


@pytest.mark.parametrize(("name", "expected"), [
    ("fresh", "version=0.1.1 install=True"),            # nothing installed: the pin
    ("pinned_newer", "version=0.1.0 install=True"),     # a new pin alone changes no version
    ("upgrade", "version=0.1.1 install=True"),          # firezone_gateway_upgrade: the pin
    ("older_pin", "version=0.1.0 install=True"),        # back to an older pin, allowed the same way
    ("minor_allowed", "version=0.2.0 install=True"),
    ("no_token_kept", "version=0.1.0 install=True"),    # no token given, the host's own is kept
])
def test_the_version_a_run_leaves_active(decided: dict[str, Any], name: str, expected: str) -> None:
    assert decision(decided[name]) == expected


def test_a_host_keeping_its_version_says_so(decided: dict[str, Any]) -> None:
    message = dict(decided["pinned_newer"])["Preflight | Keeping the installed version"]["msg"]
    assert "keeps 0.1.0" in message and "firezone_gateway_version is 0.1.1" in message, message
    assert "firezone_gateway_upgrade: true" in message, message


def test_another_minor_version_needs_its_own_switch(decided: dict[str, Any]) -> None:
    task, message = failure(decided["minor"])
    assert task == "Preflight | A change of minor version needs its own switch", (task, message)
    assert "runs 0.1.0" in message and "0.2.0" in message and "firezone_gateway_upgrade_minor: true" in message
    assert message.endswith("Nothing was changed on this host.")
    assert decided["__stats__"]["minor"]["changed"] == 0


def test_the_token_is_needed_only_on_a_host_without_one(decided: dict[str, Any]) -> None:
    task, message = failure(decided["no_token_none"])
    assert task == "Preflight | Require the token, unless the host has one", (task, message)
    assert "firezone_gateway_token is not set and no_token_none has no token yet" in message
    assert failure(decided["no_token_kept"]) == ("", "")


def test_the_probe_reads_the_host_not_the_controller_view(decided: dict[str, Any], tmp_path: Path) -> None:
    probe = dict(decided["pinned_newer"])["Preflight | Read the host's state (one read-only call)"]
    assert probe["current"] == "0.1.0" and probe["token_present"] is True
    assert [v["name"] for v in probe["versions"]] == ["0.1.0"] and probe["versions"][0]["installed"] == ""
    assert len(probe["new_id"]) == 64 and probe["id"] == ""
    assert os.path.basename(probe["versions"][0]["path"]) == "0.1.0"


def test_installing_without_enrolling_needs_no_token_and_refuses_one(decided: dict[str, Any]) -> None:
    assert failure(decided["bake"]) == ("", ""), failure(decided["bake"])
    task, message = failure(decided["bake_given_token"])
    assert task == "Preflight | Installing without enrolling takes no token and no ID", (task, message)
    assert "leave firezone_gateway_token and firezone_gateway_id empty" in message
    task, message = failure(decided["bake_enrolled_host"])
    assert task == "Preflight | Installing without enrolling needs a host that was never enrolled", (task, message)
    assert "bake_enrolled_host has a token" in message and message.endswith("Nothing was changed on this host.")
