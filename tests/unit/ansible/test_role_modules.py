"""The role's own modules (plugins/modules/), run by ansible-playbook on the local host.

firezone_gateway_files must change only what differs, say so in check mode without touching
anything, show diffs except where told not to, keep the replaced file when asked, and fail in
one line where it cannot write. firezone_gateway_probe must report what it reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.ansible.test_role_preflight import LOCAL, host_results, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the files are root-owned")

PLAY = """\
---
- name: The role's files module
  hosts: all
  gather_facts: false
  roles:
    - role: firezone_gateway
      # Only the modules: the role's tasks are not run.
      when: false
  tasks:
    - name: Files
      firezone_gateway_files:
        directories:
          - {path: "{{ fz_dir }}/etc", owner: root, group: root, mode: "0750"}
        files:
          - {path: "{{ fz_dir }}/etc/env", content: "{{ fz_env }}", owner: root, group: root, mode: "0644",
             backup_to: "{{ fz_dir }}/etc/env.previous"}
          - {path: "{{ fz_dir }}/etc/secret", content: "hidden-{{ fz_env | length }}", owner: root,
             group: root, mode: "0400", diff: false}
        links:
          - {path: "{{ fz_dir }}/current", src: "{{ fz_version }}"}
        modes:
          - {path: "{{ fz_dir }}/device", mode: "0666"}
          - {path: "{{ fz_dir }}/absent", mode: "0666"}
      register: fz_result
"""


def apply(tmp_path: Path, env: str, version: str, *args: str) -> dict[str, Any]:
    work = tmp_path / "host"
    work.mkdir(exist_ok=True)
    (tmp_path / "play.yml").write_text(PLAY)
    hosts = {"h": {**LOCAL, "fz_dir": str(work), "fz_env": env, "fz_version": version}}
    done = run(tmp_path / "play.yml", {"all": {"hosts": hosts}}, tmp_path, *args)
    assert done.returncode in (0, 2), done.stdout[-2000:] + done.stderr
    return dict(host_results(done.stdout)["h"])["Files"]


def test_files_change_only_what_differs_and_check_mode_touches_nothing(tmp_path: Path) -> None:
    work = tmp_path / "host"
    work.mkdir()
    (work / "device").write_text("")
    os.chmod(work / "device", 0o600)

    first = apply(tmp_path, "A=1\n", "0.1.0", "--check", "--diff")
    assert first["changed"] and not (work / "etc").exists() and not (work / "current").is_symlink()
    assert oct((work / "device").stat().st_mode & 0o777) == "0o600"

    done = apply(tmp_path, "A=1\n", "0.1.0")
    assert done["changed"]
    assert sorted(done["changed_paths"]) == sorted(str(work / p) for p in ("etc", "etc/env", "etc/secret", "current",
                                                                          "device"))
    assert (work / "etc" / "env").read_text() == "A=1\n" and oct((work / "etc").stat().st_mode & 0o777) == "0o750"
    assert oct((work / "etc" / "secret").stat().st_mode & 0o777) == "0o400"
    assert os.readlink(work / "current") == "0.1.0" and oct((work / "device").stat().st_mode & 0o777) == "0o666"
    assert not (work / "etc" / "env.previous").exists()  # nothing was replaced

    again = apply(tmp_path, "A=1\n", "0.1.0", "--check", "--diff")
    assert not again["changed"] and again["changed_paths"] == []


def test_a_replaced_file_is_kept_and_a_hidden_one_stays_out_of_the_diff(tmp_path: Path) -> None:
    apply(tmp_path, "A=1\n", "0.1.0")
    work = tmp_path / "host"
    checked = apply(tmp_path, "A=22\n", "0.1.1", "--check", "--diff")
    diffs = {d["after_header"]: d for d in checked["diff"]}
    env = diffs[str(work / "etc" / "env")]
    assert (env["before"], env["after"]) == ("A=1\n", "A=22\n")
    assert "hidden-" not in str(diffs[str(work / "etc" / "secret")]), diffs  # the content, not "(content hidden)"
    assert (work / "etc" / "env").read_text() == "A=1\n"  # check mode

    apply(tmp_path, "A=22\n", "0.1.1")
    assert (work / "etc" / "env").read_text() == "A=22\n"
    assert (work / "etc" / "env.previous").read_text() == "A=1\n"
    assert os.readlink(work / "current") == "0.1.1"
    assert not [p for p in (work / "etc").iterdir() if p.name.startswith(".")], "a temporary file is left"


def test_a_file_whose_directory_is_missing_is_one_line(tmp_path: Path) -> None:
    play = tmp_path / "missing.yml"
    play.write_text(PLAY.replace('- {path: "{{ fz_dir }}/etc", owner: root, group: root, mode: "0750"}', "[]")
                    .replace("        directories:\n          []", "        directories: []"))
    (tmp_path / "host").mkdir()
    hosts = {"h": {**LOCAL, "fz_dir": str(tmp_path / "host"), "fz_env": "A=1\n", "fz_version": "1"}}
    done = run(play, {"all": {"hosts": hosts}}, tmp_path)
    result = dict(host_results(done.stdout)["h"])["Files"]
    assert result.get("failed"), result
    assert result["msg"] == f"{tmp_path}/host/etc/env: its directory {tmp_path}/host/etc does not exist"
