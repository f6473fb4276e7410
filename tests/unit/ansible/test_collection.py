"""The collection fzpy.firezone: built by ansible-galaxy from galaxy.yml, it holds the role and
the playbooks and nothing else, carries the package's version with a changelog entry for it,
and once installed its playbooks and its role resolve by their collection names."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

import gateway_pkg

ROOT = Path(__file__).resolve().parents[3]
BIN = ROOT / ".venv" / "bin"
GALAXY = BIN / "ansible-galaxy"
PLAYBOOK = BIN / "ansible-playbook"

pytestmark = pytest.mark.skipif(not GALAXY.exists(), reason="ansible is not in the venv (make venv)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collection")
    done = subprocess.run([str(GALAXY), "collection", "build", "--output-path", str(out), str(ROOT)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [tarball] = out.glob("fzpy-firezone-*.tar.gz")
    return tarball


def test_the_version_is_the_packages_and_the_changelog_has_it(built: Path) -> None:
    meta = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert meta["version"] == gateway_pkg.__version__
    assert built.name == f"fzpy-firezone-{gateway_pkg.__version__}.tar.gz"
    assert f"\n## {gateway_pkg.__version__}\n" in (ROOT / "CHANGELOG.md").read_text()


def test_it_holds_the_role_and_the_playbooks_and_nothing_of_the_repository(built: Path) -> None:
    with tarfile.open(built) as tar:
        names = set(tar.getnames())
    for needed in ("roles/firezone_gateway/tasks/main.yml", "roles/firezone_gateway/meta/argument_specs.yml",
                   "roles/firezone_gateway/defaults/main.yml", "playbooks/site.yml", "playbooks/install.yml",
                   "playbooks/uninstall.yml", "meta/runtime.yml", "CHANGELOG.md", "README.md",
                   "plugins/modules/firezone_gateway_probe.py", "plugins/modules/firezone_gateway_files.py"):
        assert needed in names, needed
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"MANIFEST.json", "FILES.json", "README.md", "CHANGELOG.md", "meta", "roles", "playbooks",
                    "plugins"}
    # The role's library link is the git checkout's way to plugins/modules, not the collection's.
    assert not [n for n in names if n.startswith("roles/firezone_gateway/library")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_its_playbooks_and_role_resolve_by_collection_name(built: Path, tmp_path: Path) -> None:
    collections = tmp_path / "collections"
    done = subprocess.run([str(GALAXY), "collection", "install", "--force", "-p", str(collections), str(built)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    firezone_gateways:\n      hosts:\n        gw1:\n")
    play = tmp_path / "play.yml"
    play.write_text("- name: The role from the collection\n  hosts: firezone_gateways\n"
                    "  roles:\n    - role: fzpy.firezone.firezone_gateway\n")
    # No roles_path: only the installed collection can provide the role.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")} | {
        "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_ROLES_PATH": str(tmp_path / "no-roles"),
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")}
    for target in ("fzpy.firezone.site", "fzpy.firezone.install", "fzpy.firezone.uninstall", str(play)):
        done = subprocess.run([str(PLAYBOOK), "-i", str(inventory), "--syntax-check", target], cwd=tmp_path,
                              capture_output=True, text=True, check=False, timeout=120, env=env)
        assert done.returncode == 0, (target, done.stdout + done.stderr)
