"""The role refuses bad variables in preflight, before anything changes (issue 14, defects 2-4).

Each test runs the real playbooks with ansible-playbook against local-connection hosts in a
temporary inventory: in check mode for the preflight refusals, and for the rollback with the
role's paths pointed into a temporary directory. A failing host must fail in a preflight task,
with a message naming the variable and its rule, after 0 changed tasks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "firezone_gateway"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"

pytestmark = pytest.mark.skipif(not PLAYBOOK_BIN.is_file(), reason="ansible-playbook is not installed in this venv")

LOCAL = {"ansible_connection": "local", "ansible_become": False, "ansible_python_interpreter": sys.executable}
# Task names that may run before a refusal: nothing of them touches the host.
BEFORE_ANYTHING = re.compile(r"^(Gathering Facts|Validating arguments .*|Preflight \| .*)$")


def run(playbook: Path | str, inventory: dict[str, Any], tmp_path: Path, *args: str,
        callback: str = "ansible.posix.json") -> subprocess.CompletedProcess[str]:
    inventory_file = tmp_path / "inventory.yml"
    inventory_file.write_text(yaml.safe_dump(inventory))
    env = os.environ | {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": callback,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_LOG_PATH": "",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
    }
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return subprocess.run([str(PLAYBOOK_BIN), "-i", str(inventory_file), *args, str(playbook)], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False, timeout=300)


def host_results(output: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """host -> [(task name, result)] in the order they ran, from the json callback."""
    data = json.loads(output[output.index("{"):])
    ran: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for play in data["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                name = task["task"]["name"].removeprefix("firezone_gateway : ")
                ran.setdefault(host, []).append((name, result))
    return ran | {"__stats__": data["stats"]}  # type: ignore[dict-item]


def failure(results: list[tuple[str, dict[str, Any]]]) -> tuple[str, str]:
    """(task, message) of the failed task: for a loop, the messages of its failed items."""
    for name, result in results:
        if result.get("failed"):
            items = [r.get("msg", "") for r in result.get("results", []) if r.get("failed")]
            return name, "\n".join(items) or result.get("msg", "")
    return "", ""


# host -> (its variables, what the message must name)
BAD: dict[str, tuple[dict[str, Any], list[str]]] = {
    "log_level": ({"firezone_gateway_log_level": "loud"},
                  ["firezone_gateway_log_level", '"loud"', "RUST_LOG must be a log level"]),
    "api_url": ({"firezone_gateway_api_url": "ftp://portal.example"},
                ["firezone_gateway_api_url", "FIREZONE_API_URL must be an http://, https://, ws:// or wss:// URL"]),
    "api_url_port": ({"firezone_gateway_api_url": "wss://portal.example:70000"},
                     ["firezone_gateway_api_url", "port 0-65535"]),
    "api_url_credentials": ({"firezone_gateway_api_url": "wss://admin:hunter2@portal.example"},
                            ["firezone_gateway_api_url", "no user name or password"]),
    "health_host_name": ({"firezone_gateway_health_check_addr": "localhost:8080"},
                         ["firezone_gateway_health_check_addr", "HEALTH_CHECK_ADDR must be IP:PORT"]),
    "health_port": ({"firezone_gateway_health_check_addr": "127.0.0.1:99999"},
                    ["firezone_gateway_health_check_addr", "HEALTH_CHECK_ADDR"]),
    "log_format": ({"firezone_gateway_log_format": "xml"},
                   ["firezone_gateway_log_format", "FIREZONE_LOG_FORMAT must be human or json"]),
    "flags_url": ({"firezone_gateway_feature_flags_url": "ws://flags.example/decide"},
                  ["firezone_gateway_feature_flags_url", "http:// or https://"]),
    "flags_interval": ({"firezone_gateway_feature_flags_interval": 0},
                       ["firezone_gateway_feature_flags_interval", "positive number of seconds"]),
    "name_newline": ({"firezone_gateway_name": "gw\nFIREZONE_API_URL=ws://evil"},
                     ["firezone_gateway_name", "on one line"]),
    "extra_port": ({"firezone_gateway_extra_env": {"FIREZONE_UDP_PORT": "70000"}},
                   ["firezone_gateway_extra_env.FIREZONE_UDP_PORT", "port number 0-65535"]),
    "extra_seconds": ({"firezone_gateway_extra_env": {"FIREZONE_DNS_LEGACY_TTL": "soon"}},
                      ["firezone_gateway_extra_env.FIREZONE_DNS_LEGACY_TTL", "number of seconds"]),
    "extra_unknown": ({"firezone_gateway_extra_env": {"FIREZONE_UDP_PROT": "52625"}},
                      ["firezone_gateway_extra_env", "FIREZONE_UDP_PROT", "not a setting the gateway reads"]),
    "extra_token": ({"firezone_gateway_extra_env": {"FIREZONE_TOKEN": "leak"}},
                    ["firezone_gateway_extra_env", "FIREZONE_TOKEN", "LoadCredential"]),
    "extra_owned": ({"firezone_gateway_extra_env": {"RUST_LOG": "debug"}},
                    ["firezone_gateway_extra_env", "RUST_LOG", "firezone_gateway_log_level"]),
    "flag_unknown": ({"firezone_gateway_feature_flags": {"no_such_flag": True}},
                     ["firezone_gateway_feature_flags", "no_such_flag", "gateway_userspace_dns_a_aaaa_records"]),
    "flag_value": ({"firezone_gateway_feature_flags": {"gateway_userspace_dns_a_aaaa_records": "maybe"}},
                   ["firezone_gateway_feature_flags.gateway_userspace_dns_a_aaaa_records", "true or false"]),
    "no_token": ({"firezone_gateway_token": ""}, ["firezone_gateway_token is not set"]),
}
# What the Molecule scenarios and the demo set: every variable check passes.
GOOD = {
    "firezone_gateway_api_url": "ws://10.89.61.10:8081",
    "firezone_gateway_health_check_addr": "[::1]:8080",
    "firezone_gateway_log_level": "info,gateway_pkg.portal=debug",
    "firezone_gateway_log_format": "JSON",
    "firezone_gateway_feature_flags_url": "http://10.89.61.10:8081/decide",
    "firezone_gateway_feature_flags_interval": 2,
    "firezone_gateway_feature_flags": {"gateway_userspace_dns_a_aaaa_records": True},
    "firezone_gateway_extra_env": {"FIREZONE_DNS_LEGACY_TTL": "10", "FIREZONE_UDP_PORT": 52625,
                                   "FIREZONE_NO_CHECK": True},
}
LAST_VARIABLE_CHECK = "Preflight | Check firezone_gateway_keep_versions"
# playbooks/install.yml without its fact gathering (the variable checks need no facts; the
# good host gathers them in preflight), so that twenty hosts take seconds.
INSTALL_WITHOUT_FACTS = """\
---
- name: Install the Firezone Gateway
  hosts: firezone_gateways
  become: true
  gather_facts: false
  roles:
    - role: firezone_gateway
"""


@pytest.fixture(scope="module")
def check_mode_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("preflight")
    common = {**LOCAL, "firezone_gateway_token": "unit-test-token-0f3a",
              # Never a wheelhouse: no host gets past preflight, whatever it is.
              "firezone_gateway_wheelhouse_dir": str(tmp_path / "no-wheelhouse")}
    hosts = {name: {**common, **variables} for name, (variables, _) in BAD.items()} | {"good": {**common, **GOOD}}
    playbook = tmp_path / "install.yml"
    playbook.write_text(INSTALL_WITHOUT_FACTS)
    done = run(playbook, {"firezone_gateways": {"hosts": hosts}}, tmp_path, "--check", "--forks", str(len(hosts)))
    return host_results(done.stdout)


@pytest.mark.parametrize("host", sorted(BAD))
def test_a_bad_variable_is_refused_in_preflight_before_anything_changes(check_mode_run: dict[str, Any],
                                                                         host: str) -> None:
    results = check_mode_run[host]
    task, message = failure(results)
    assert task.startswith("Preflight | "), (task, message)
    for needle in BAD[host][1]:
        assert needle in message, (needle, message)
    assert message.endswith("Nothing was changed on this host."), message
    # Nothing but preflight ran, and nothing changed.
    assert all(BEFORE_ANYTHING.match(name) for name, _ in results), [name for name, _ in results]
    assert check_mode_run["__stats__"][host]["changed"] == 0


def test_one_rule_one_message(check_mode_run: dict[str, Any]) -> None:
    # A bad URL names its variable and the URL rule only, not every rule of the role.
    _, message = failure(check_mode_run["api_url"])
    assert message.count("firezone_gateway_") == 1, message
    for other in ("HEALTH_CHECK_ADDR", "keep_versions", "interface", "feature flag", "letters, digits"):
        assert other not in message
    # The password of a URL with credentials is not repeated in the message.
    assert "hunter2" not in failure(check_mode_run["api_url_credentials"])[1]


def test_good_values_pass_every_variable_check(check_mode_run: dict[str, Any]) -> None:
    results = dict(check_mode_run["good"])
    assert LAST_VARIABLE_CHECK in results, list(results)
    variable_checks = [name for name, _ in check_mode_run["good"]][: list(results).index(LAST_VARIABLE_CHECK) + 1]
    failed = [name for name in variable_checks if results[name].get("failed")]
    assert failed == [], failed


def test_a_missing_token_is_one_line_not_the_argument_spec(tmp_path: Path) -> None:
    hosts = {"no_token": {**LOCAL}, "bad_url": {**LOCAL, "firezone_gateway_token": "t",
                                                "firezone_gateway_api_url": "ftp://portal.example"}}
    done = run(REPO / "playbooks" / "install.yml", {"firezone_gateways": {"hosts": hosts}}, tmp_path, "--check",
               callback="ansible.builtin.default")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "argument_spec" not in out and "firezone_gateway_install_root" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("[ERROR]")]
    missing = r"firezone_gateway_token is not set and no_token has no token yet: .* Nothing was changed on this host\.$"
    assert any(re.search(missing, line) for line in errors), errors
    assert any(re.search(r"firezone_gateway_api_url is \"ftp://portal.example\": FIREZONE_API_URL must be", line)
               for line in errors), errors
    assert re.search(r"no_token\s+: ok=\d+\s+changed=0 .*failed=1", out), out
    assert re.search(r"bad_url\s+: ok=\d+\s+changed=0 .*failed=1", out), out


def test_site_does_not_roll_back_a_host_that_failed_preflight(tmp_path: Path) -> None:
    # A fleet host with a previous version: a preflight refusal must not swap its versions.
    root = tmp_path / "opt"
    for version in ("0.1.0", "0.2.0"):
        (root / version).mkdir(parents=True)
    (root / "current").symlink_to("0.2.0")
    (root / "previous").symlink_to("0.1.0")
    hosts = {"fleet1": {**LOCAL, "firezone_gateway_token": "t", "firezone_gateway_api_url": "ftp://portal.example",
                        "firezone_gateway_install_root": str(root), "firezone_gateway_verify": False,
                        "firezone_gateway_wheelhouse_dir": str(tmp_path / "no-wheelhouse")}}
    done = run(REPO / "playbooks" / "site.yml", {"firezone_gateways": {"hosts": hosts}}, tmp_path,
               callback="ansible.builtin.default")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert (os.readlink(root / "current"), os.readlink(root / "previous")) == ("0.2.0", "0.1.0"), out
    assert "fleet1 failed preflight" in out and "nothing was changed on it" in out, out
    assert re.search(r"fleet1\s+: ok=\d+\s+changed=0 ", out), out


# Tasks that make the local host look like a systemd host to preflight: the test machine may
# run no systemd (a container).
SYSTEMD_HOST_TASKS = """\
    - name: Facts of a systemd host
      ansible.builtin.setup:
        gather_subset: [min, virtual]

    - name: Say systemd manages it
      ansible.builtin.set_fact:
        ansible_facts: "{{ ansible_facts | combine({'service_mgr': 'systemd'}) }}"

"""

ROLLBACK_PLAYBOOK = """\
---
- name: Configure, then roll back (the role's paths in a temporary directory)
  hosts: all
  gather_facts: false
  vars:
    paths: &paths
      __firezone_gateway_config_dir: "{{ fz_dir }}/etc"
      __firezone_gateway_token_path: "{{ fz_dir }}/etc/gateway-token"
      __firezone_gateway_env_path: "{{ fz_dir }}/etc/gateway-env"
      __firezone_gateway_state_dir: "{{ fz_dir }}/state"
      __firezone_gateway_id_path: "{{ fz_dir }}/state/gateway_id"
      __firezone_gateway_group: root
      __firezone_gateway_service: fz-unit-test-absent.service
  tasks:
""" + SYSTEMD_HOST_TASKS + """\
    - name: Preflight (configure decides from the host's state it reads)
      ansible.builtin.include_role:
        name: firezone_gateway
        tasks_from: preflight
      vars: *paths
      when: fz_configure

    - name: Configure (a converge that changes the settings)
      ansible.builtin.include_role:
        name: firezone_gateway
        tasks_from: configure
      vars: *paths
      when: fz_configure

    - name: Roll back
      ansible.builtin.include_role:
        name: firezone_gateway
        tasks_from: rollback
      vars: *paths

    - name: Stop before the restart handlers
      ansible.builtin.meta: end_play
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the role makes its files root-owned")
def test_a_rollback_puts_back_the_env_file_the_run_replaced(tmp_path: Path) -> None:
    hosts = {}
    for host, configure in (("replaced", True), ("untouched", False)):
        work = tmp_path / host
        (work / "etc").mkdir(parents=True)
        (work / "opt" / "0.1.0").mkdir(parents=True)
        (work / "opt" / "0.2.0").mkdir()
        (work / "opt" / "current").symlink_to("0.2.0")
        (work / "opt" / "previous").symlink_to("0.1.0")
        (work / "etc" / "gateway-env").write_text('RUST_LOG="info"\n# the settings before this run\n')
        # Left over from an older run: only what this run replaced may come back.
        (work / "etc" / "gateway-env.previous").write_text('RUST_LOG="stale"\n')
        hosts[host] = {**LOCAL, "fz_dir": str(work), "fz_configure": configure, "firezone_gateway_token": "t",
                       "firezone_gateway_install_root": str(work / "opt"), "firezone_gateway_verify": False,
                       "firezone_gateway_api_url": "ws://127.0.0.1:9", "firezone_gateway_install_method": "index",
                       "firezone_gateway_capability_launcher": False}
    playbook = tmp_path / "rollback.yml"
    playbook.write_text(ROLLBACK_PLAYBOOK)
    done = run(playbook, {"all": {"hosts": hosts}}, tmp_path)
    ran = host_results(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr

    replaced = tmp_path / "replaced"
    assert (replaced / "etc" / "gateway-env").read_text() == 'RUST_LOG="info"\n# the settings before this run\n'
    assert os.readlink(replaced / "opt" / "current") == "0.1.0"
    assert dict(ran["replaced"])["Rollback | Put back the settings this run replaced"].get("changed")
    assert not list((replaced / "etc").glob("gateway-env.*~")), "the template's backup file is left behind"

    untouched = tmp_path / "untouched"
    assert (untouched / "etc" / "gateway-env").read_text() == 'RUST_LOG="info"\n# the settings before this run\n'
    assert os.readlink(untouched / "opt" / "current") == "0.1.0"
