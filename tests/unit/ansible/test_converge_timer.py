"""tools/callback_plugins/converge_timer.py counts what ran on the host, not what the controller did."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.ansible.test_role_decisions import PLAYBOOK, host
from tests.unit.ansible.test_role_preflight import PLAYBOOK_BIN, REPO

pytestmark = pytest.mark.skipif(not PLAYBOOK_BIN.is_file(), reason="ansible-playbook is not installed in this venv")


def test_remote_tasks_of_the_role_are_counted_and_logged(tmp_path: Path) -> None:
    hosts = {"one": host(tmp_path, "one", "0.1.0", True, firezone_gateway_version="0.1.0"),
             "two": host(tmp_path, "two", None, False, firezone_gateway_token="t", firezone_gateway_version="0.1.0")}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    log = tmp_path / "timing.jsonl"
    env = os.environ | {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
                        "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "tools" / "callback_plugins"),
                        "ANSIBLE_CALLBACKS_ENABLED": "converge_timer", "FZ_CONVERGE_LOG": str(log),
                        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOG_PATH": ""}
    done = subprocess.run([str(PLAYBOOK_BIN), "-i", str(tmp_path / "inventory.yml"), "--check",
                           str(tmp_path / "play.yml")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    line = [x for x in done.stdout.splitlines() if x.startswith("converge timing: play.yml")]
    assert line, done.stdout[-2000:]
    record = json.loads(log.read_text().splitlines()[-1])
    # The role's own remote work in preflight here: the probe (the playbook gathered the facts
    # itself, so preflight's setup is skipped); the asserts and set_facts ran on the controller.
    assert record["remote_tasks"] == {"one": 1, "two": 1}, record
    assert record["changed"] == 0 and record["hosts"] == 2
    assert "changed nothing" in line[0] and "one 1, two 1" in line[0], line
