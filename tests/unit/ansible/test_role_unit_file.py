"""The systemd unit does not carry the version (issue 14, defect 3).

A rollback only moves the `current` link; a unit naming the version would then name the wrong
one, and the next run at the old pin would rewrite it and restart the service. The unit must
render the same for every version.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "firezone_gateway"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"

RENDER = """\
---
- name: Render the unit for two versions, the way the role does outside a container
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  vars:
    __firezone_gateway_sysctl_write: true
  tasks:
    - name: Render
      ansible.builtin.template:
        src: {role}/templates/firezone-gateway.service.j2
        dest: "{out}/{{{{ item }}}}.service"
        mode: "0644"
      vars:
        firezone_gateway_version: "{{{{ item }}}}"
      loop: ["0.1.0", "0.1.0.post1", "9.8.7"]
"""


@pytest.mark.skipif(not PLAYBOOK_BIN.is_file(), reason="ansible-playbook is not installed in this venv")
def test_the_unit_is_the_same_for_every_version(tmp_path: Path) -> None:
    playbook = tmp_path / "render.yml"
    playbook.write_text(RENDER.format(role=ROLE, out=tmp_path))
    env = os.environ | {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCALHOST_WARNING": "false",
                        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false", "ANSIBLE_LOG_PATH": ""}
    done = subprocess.run([str(PLAYBOOK_BIN), "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                           str(playbook)], cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    units = {version: (tmp_path / f"{version}.service").read_text() for version in ("0.1.0", "0.1.0.post1", "9.8.7")}
    assert units["0.1.0"] == units["0.1.0.post1"] == units["9.8.7"]
    assert "Description=Firezone Gateway (firezone-gateway-py)\n" in units["0.1.0"]
    for version in units:
        assert version not in units[version]


def test_the_unit_template_does_not_use_the_version() -> None:
    # `current` says which version runs; the unit only ever points at it.
    template = (ROLE / "templates" / "firezone-gateway.service.j2").read_text()
    assert "firezone_gateway_version" not in template
    assert "__firezone_gateway_venv" not in template
