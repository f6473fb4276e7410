# Part of the firezone gateway repository's test tooling. GNU General Public License v3.0+
"""Print how long the role took in an ansible-playbook run and how many remote tasks it made.

A remote task is one that ran on a host: not skipped, not a controller-side action (set_fact,
assert, debug, include_*, ...), not delegated to the controller; a loop counts each item that
ran. Over a connection that cannot pipeline (podman) each costs a round trip, so the count is
the lever on a converge's time. Counted for the firezone_gateway role's tasks only.

Enabled by the Molecule scenarios and the container demo (callbacks_enabled = converge_timer,
callback_plugins = tools/callback_plugins). Each run also appends one JSON line to
FZ_CONVERGE_LOG (in a Molecule scenario by default converge-timing.jsonl in its ephemeral
directory): {"playbook", "seconds" (the role), "run_seconds", "hosts", "changed", "remote_tasks"}.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: converge_timer
type: aggregate
short_description: wall time and remote task count of a run of the firezone_gateway role
description:
  - Prints one line at the end of a playbook run; appends it as JSON to FZ_CONVERGE_LOG if set.
requirements:
  - enabled in callbacks_enabled
"""

ROLE = "firezone_gateway"
CONTROLLER_ACTIONS = {
    "add_host", "assert", "debug", "fail", "group_by", "import_playbook", "import_role", "import_tasks",
    "include_role", "include_tasks", "include_vars", "meta", "set_fact", "set_stats",
    "validate_argument_spec", "validate_argument_specs",
}
# What the figures are held against (docs/ansible.md, "How long a converge takes").
TARGETS = {"no_change": {"tasks": 15, 1: 30, 3: 45}, "converge": {1: 60, 3: 90}}


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "converge_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()
        self.playbook = ""
        self.remote: dict[str, int] = {}
        # From the start of the role's first task to the end of its last: the converge itself,
        # without the plays around it (a scenario's own checks, a fleet report).
        self.role_started: float | None = None
        self.role_ended: float | None = None

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self.started = time.monotonic()
        self.playbook = os.path.basename(getattr(playbook, "_file_name", "") or "")

    @staticmethod
    def _ours(task: Any) -> bool:
        role = getattr(task, "_role", None)
        return role is not None and role.get_name().split(".")[-1] == ROLE

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        if self._ours(task) and self.role_started is None:
            self.role_started = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.v2_playbook_on_task_start(task, False)

    def _count(self, result: Any) -> None:
        task = result._task
        if not self._ours(task):
            return
        self.role_ended = time.monotonic()
        if task.action.split(".")[-1] in CONTROLLER_ACTIONS:
            return
        if str(task.delegate_to or "") in ("localhost", "127.0.0.1"):
            return
        items = result._result.get("results")
        ran = (sum(1 for item in items if isinstance(item, dict) and not item.get("skipped"))
               if isinstance(items, list) else 1)
        host = result._host.get_name()
        self.remote[host] = self.remote.get(host, 0) + ran

    def v2_runner_on_ok(self, result: Any) -> None:
        self._count(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._count(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        total = time.monotonic() - self.started
        seconds = (self.role_ended - self.role_started
                   if self.role_started is not None and self.role_ended is not None else total)
        hosts = sorted(stats.processed)
        changed = sum(stats.summarize(h)["changed"] for h in hosts)
        if not self.remote:
            return  # a run without the role (prepare, verify's own plays)
        kind = "no_change" if changed == 0 else "converge"
        most = max(self.remote.values())
        target = TARGETS[kind].get(len(self.remote))
        limits = f"target <= {TARGETS['no_change']['tasks']} remote tasks" if kind == "no_change" else ""
        if target is not None:
            limits = ", ".join(x for x in (limits, f"<= {target} s for {len(self.remote)} host(s)") if x)
        per_host = ", ".join(f"{h} {n}" for h, n in sorted(self.remote.items()))
        self._display.display(
            f"converge timing: {self.playbook} {'changed nothing' if kind == 'no_change' else f'changed {changed}'}"
            f" in {seconds:.1f} s (the role; the whole run {total:.1f} s) on {len(self.remote)} host(s); "
            f"remote tasks of the role: {per_host} "
            f"(most {most}){f'; {limits}' if limits else ''}")
        path = os.environ.get("FZ_CONVERGE_LOG") or (
            os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "converge-timing.jsonl")
            if os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY") else "")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"playbook": self.playbook, "seconds": round(seconds, 1),
                                         "run_seconds": round(total, 1),
                                         "hosts": len(self.remote), "changed": changed,
                                         "remote_tasks": self.remote}) + "\n")
