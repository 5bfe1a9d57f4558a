"""Run sandbox jobs in another environment (another user, or under a seccomp filter refusing namespaces).

Used by tests/test_tasks_sandbox_attacks.py as ``python sandbox_runner.py [--deny unshare,landlock]``
with a JSON list of jobs on stdin; prints a JSON list of results. Stdlib-only, and it loads the
sandbox modules by path, so that any interpreter the test user can read (e.g. /usr/bin/python3)
runs it without peft-svf's dependencies. ``@RUNNER_PID@`` in a program is replaced by this
process's pid (the "trainer" a program may try to kill).

``--deny unshare`` installs what Docker's default seccomp profile does to namespaces (unshare and
clone with namespace flags refused with EPERM, clone3 with ENOSYS); ``--deny landlock`` makes
Landlock look absent (ENOSYS), as on kernels before 5.13 or with Landlock disabled.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import json
import os
import sys
from pathlib import Path

_TASKS = Path(__file__).resolve().parent.parent / "src" / "peft_svf" / "tasks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def deny(what: set[str]) -> None:
    """Install the refusals named in ``what`` on this process and everything it starts."""
    sc = _load("_sandbox_syscalls_runner", _TASKS / "sandbox_syscalls.py")
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    enosys = {"clone3": None} if "unshare" in what else {}
    if "landlock" in what:
        enosys["landlock_create_ruleset"] = None
    if enosys:
        sc.install_seccomp(sc.seccomp_filter(enosys, errno=errno.ENOSYS))
    if "unshare" in what:
        rules = {"unshare": None, "setns": None, "clone": ("deny_if_any_bit", 0, sc.NAMESPACE_FLAGS)}
        sc.install_seccomp(sc.seccomp_filter(rules, errno=errno.EPERM))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--deny"]:
        deny(set(args[1].split(",")))
    sandbox = _load("_sandbox_runner", _TASKS / "sandbox.py")
    results = []
    for job in json.loads(sys.stdin.read()):
        limits = sandbox.SandboxLimits(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["limits"].items()})
        sources = [s.replace("@RUNNER_PID@", str(os.getpid())) for s in job["sources"]]
        try:
            batch = sandbox.run_programs(sources, limits)
            results.append([dataclasses.asdict(r) for r in batch])
        except sandbox.SandboxUnavailable as error:
            results.append({"unavailable": str(error)})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
