#!/usr/bin/python
# -*- coding: utf-8 -*-
# Part of the firezone_gateway role. GNU General Public License v3.0+ (see COPYING or
# https://www.gnu.org/licenses/gpl-3.0.txt)
"""Put the role's directories, files, links and modes in place in one remote call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: firezone_gateway_files
short_description: Converge the firezone_gateway role's files in one call
description:
  - Creates directories, writes files atomically (content rendered on the controller), points
    symbolic links and sets modes, each only when it differs. Supports check and diff mode.
  - One call instead of one task per file: over connections that cannot pipeline (podman),
    every remote task costs a round trip, and a run that changes nothing is mostly those.
options:
  directories:
    description: "Directories: {path, owner, group, mode}."
    type: list
    elements: dict
    default: []
  files:
    description:
      - "Files: {path, content, owner, group, mode, backup_to, diff}."
      - C(backup_to) receives the old file when the content changes (a rollback puts it back).
      - C(diff=false) keeps the content out of the diff.
    type: list
    elements: dict
    default: []
  links:
    description: "Symbolic links: {path, src} (src as written in the link)."
    type: list
    elements: dict
    default: []
  modes:
    description: "Modes of paths that exist already and are not the role's (e.g. /dev/net/tun): {path, mode}."
    type: list
    elements: dict
    default: []
author: firezone_gateway role maintainers
"""

RETURN = r"""
changed_paths: {description: Paths that were (or in check mode would be) changed, type: list, returned: always}
"""

import grp
import os
import pwd
import shutil
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule


class Plan:
    def __init__(self, module):
        self.module = module
        self.check = module.check_mode
        self.changed = []
        self.diff = []

    def ids(self, entry):
        """(uid, gid) of an entry's owner and group; None where the account does not exist yet."""
        try:
            uid = pwd.getpwnam(entry.get("owner") or "root").pw_uid
            gid = grp.getgrnam(entry.get("group") or "root").gr_gid
        except KeyError as missing:
            if self.check:  # created by an earlier task of the same run, not done in check mode
                return None
            self.module.fail_json(msg="%s: no such user or group %s" % (entry["path"], missing))
        return uid, gid

    def note(self, path, before, after):
        if path not in self.changed:
            self.changed.append(path)
        self.diff.append({"before_header": path, "after_header": path, "before": before, "after": after})

    def attributes(self, path, entry, info):
        """Owner, group and mode of an existing path; None means they are as wanted."""
        ids = self.ids(entry)
        mode = int(entry["mode"], 8)
        if ids is None:
            return "owner %s:%s" % (entry.get("owner"), entry.get("group"))
        wrong = []
        if (info.st_uid, info.st_gid) != ids:
            wrong.append("owner")
        if stat.S_IMODE(info.st_mode) != mode:
            wrong.append("mode")
        if not wrong:
            return None
        if not self.check:
            os.chown(path, *ids, follow_symlinks=False)
            os.chmod(path, mode)
        return ", ".join(wrong)

    def directory(self, entry):
        path = entry["path"]
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self.note(path, "absent\n", "directory %s %s:%s\n" % (entry["mode"], entry.get("owner"), entry.get("group")))
            if not self.check:
                os.makedirs(path, exist_ok=True)
                self.attributes(path, entry, os.lstat(path))
            return
        if not stat.S_ISDIR(info.st_mode):
            self.module.fail_json(msg="%s exists and is not a directory" % path)
        wrong = self.attributes(path, entry, info)
        if wrong:
            self.note(path, "directory (%s differs)\n" % wrong, "directory %s %s:%s\n" % (
                entry["mode"], entry.get("owner"), entry.get("group")))

    def file(self, entry):
        path = entry["path"]
        content = entry["content"].encode("utf-8")
        show = entry.get("diff", True)
        try:
            with open(path, "rb") as handle:
                old = handle.read()
        except FileNotFoundError:
            old = None
        if old == content:
            wrong = self.attributes(path, entry, os.lstat(path))
            if wrong:
                self.note(path, "%s differs\n" % wrong, "%s %s:%s\n" % (entry["mode"], entry.get("owner"), entry.get("group")))
            return
        before = "" if old is None else (old.decode("utf-8", "replace") if show else "(content hidden)\n")
        self.note(path, before, entry["content"] if show else "(content hidden)\n")
        if self.check:
            return
        if old is not None and entry.get("backup_to"):
            shutil.copy2(path, entry["backup_to"])
        ids = self.ids(entry)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            self.module.fail_json(msg="%s: its directory %s does not exist" % (path, directory))
        handle, temporary = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
        try:
            os.fchown(handle, *ids)
            os.fchmod(handle, int(entry["mode"], 8))
            os.write(handle, content)
            os.fsync(handle)
            os.close(handle)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    def link(self, entry):
        path, src = entry["path"], entry["src"]
        try:
            old = os.readlink(path)
        except FileNotFoundError:
            old = None
        except OSError:
            self.module.fail_json(msg="%s exists and is not a symbolic link" % path)
        if old == src:
            return
        self.note(path, "absent\n" if old is None else "-> %s\n" % old, "-> %s\n" % src)
        if self.check:
            return
        temporary = "%s.%d.tmp" % (path, os.getpid())
        os.symlink(src, temporary)
        os.replace(temporary, path)

    def mode(self, entry):
        path = entry["path"]
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return
        mode = int(entry["mode"], 8)
        if stat.S_IMODE(info.st_mode) == mode:
            return
        self.note(path, "mode %04o\n" % stat.S_IMODE(info.st_mode), "mode %s\n" % entry["mode"])
        if not self.check:
            os.chmod(path, mode)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            directories=dict(type="list", elements="dict", default=[]),
            files=dict(type="list", elements="dict", default=[]),
            links=dict(type="list", elements="dict", default=[]),
            modes=dict(type="list", elements="dict", default=[]),
        ),
        supports_check_mode=True,
    )
    plan = Plan(module)
    for entry in module.params["directories"]:
        plan.directory(entry)
    for entry in module.params["files"]:
        plan.file(entry)
    for entry in module.params["links"]:
        plan.link(entry)
    for entry in module.params["modes"]:
        plan.mode(entry)
    result = {"changed": bool(plan.changed), "changed_paths": plan.changed}
    if module._diff:
        result["diff"] = plan.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
