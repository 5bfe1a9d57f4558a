"""Run model-written Python in a separate, isolated process: the only place peft-svf executes generated code.

An RL policy tries anything that raises its reward, and a program it writes may try anything a
hostile human would. So each program runs in a fresh ``python -I -S`` process (source on stdin,
never on disk) that, before the program's first line, stacks operating-system layers (see
``_sandbox_child.py``): a per-program uid when run as root, or a user namespace otherwise; PID,
network, mount and IPC namespaces; a minimal read-only root (the interpreter, its libraries and the
standard library, nothing else of the machine);
Landlock confining the filesystem to the work directory; a seccomp filter refusing sockets,
process creation, exec, signals to other processes, ptrace, mounts and namespaces; resource
limits (CPU, memory, file size, no processes) and a wall-clock kill of the process group. A
Python audit hook stays on top as an extra, never as the guard.

Which layers held is reported in ``SandboxResult.layers``. ``SandboxLimits.require`` lists what
must hold (default: the network, the filesystem and signals must each be closed by at least one
OS layer, see :data:`ASPECTS`); when it does not, :class:`SandboxUnavailable` is raised and the
program is not run at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_REFUSED_EXIT, _ERROR_EXIT = 97, 98  # kept in step with _sandbox_child.py

#: Every layer the child can set up, in the order it does.
LAYERS = ("userns", "pidns", "netns", "mountns", "ipcns", "landlock", "landlock-net", "landlock-scope",
          "uid", "rlimits", "seccomp", "audit-hook")  # fmt: skip
#: What each protection needs: any one of the alternatives (a set of layers that must all hold).
ASPECTS: dict[str, tuple[tuple[str, ...], ...]] = {
    # seccomp refuses socket() itself; a network namespace leaves path unix sockets, which the
    # mount layer's minimal root does not contain; it holds nothing of the machine's files either
    "network": (("seccomp",), ("netns", "mountns")),
    "filesystem": (("landlock",), ("mountns",)),
    "signals": (("pidns",), ("seccomp",), ("landlock-scope",), ("uid",)),
    "processes": (("rlimits",),),
}
# Per-program uids when run as root: far above any real account, distinct among running programs.
_UID_RANGE = (3_000_000_000, 4_000_000_000)
_uids_in_use: set[int] = set()
_uids_lock = threading.Lock()


class SandboxUnavailable(RuntimeError):
    """A layer ``SandboxLimits.require`` asks for is missing on this machine: the program was not run."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one program; the defaults suit MBPP/HumanEval tests (well under a second each).

    ``disk_mb`` bounds what the program may store in its work directory where the mount layer
    holds (a private tmpfs); elsewhere only each file's size is bounded (``output_bytes``).
    ``require`` names aspects of :data:`ASPECTS` or single layers of :data:`LAYERS` that must
    hold, else :class:`SandboxUnavailable` is raised (``require=LAYERS`` is the strictest,
    ``require=()`` runs with whatever the machine allows). ``skip`` turns layers off (for tests
    and for machines where a layer misbehaves); a skipped layer still counts as missing.
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    output_bytes: int = 64 * 1024
    disk_mb: int = 64
    max_workers: int = min(4, os.cpu_count() or 1)
    require: tuple[str, ...] = ("network", "filesystem", "signals")
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [n for n in (*self.require, *self.skip) if n not in LAYERS and n not in ASPECTS]
        if unknown or set(self.skip) & set(ASPECTS):
            raise ValueError(f"unknown sandbox layers {unknown or self.skip}; layers: {LAYERS}, aspects: {tuple(ASPECTS)}")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: ``passed`` means it ran to the end and exited with status 0 in time.

    ``passed`` and ``returncode`` are the program's own word, not a verdict: a hostile program can
    always exit with status 0 after failing (e.g. through ``ctypes``), so they only tell an honest
    program's failure apart; untrusted code is judged by what it reports (as the grader does).

    ``pid`` is the program's process (and process-group) id, already killed and reaped.
    ``layers`` are the isolation layers that held; ``network`` the one closing the network
    (``"netns"``, ``"seccomp"`` or ``"audit-hook"``, the last meaning no OS layer did); ``uid``
    the uid the program ran as when the sandbox was started by root (else -1).
    """

    passed: bool
    returncode: int | None
    timed_out: bool
    output: str
    network: str
    pid: int
    layers: tuple[str, ...] = ()
    uid: int = -1


def _kill_group(pgid: int, wait_s: float = 5.0) -> None:
    """Kill the whole process group and wait until it is gone.

    The program (pid 1 of its PID namespace) may outlive its supervisor by a moment when both are
    killed at once; it is then reaped by init, and only after that does its group disappear.
    """
    deadline = time.monotonic() + wait_s
    with contextlib.suppress(ProcessLookupError, PermissionError):
        while time.monotonic() < deadline:
            os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.002)


def _claim_uid() -> int:
    with _uids_lock:
        while (uid := random.randrange(*_UID_RANGE)) in _uids_in_use:
            pass
        _uids_in_use.add(uid)
        return uid


def _requirements(require: Sequence[str]) -> list[list[list[str]]]:
    return [[list(alt) for alt in ASPECTS[name]] if name in ASPECTS else [[name]] for name in require]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def run_program(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run one Python program under ``limits`` and report how it ended; never raises for the program's faults.

    Raises :class:`SandboxUnavailable` (before any of the program runs) when a required layer is
    missing, and ``RuntimeError`` when the sandbox itself could not be set up.
    """
    limits = limits or SandboxLimits()
    root = tempfile.mkdtemp(prefix="peft_svf_sandbox_")
    uid = _claim_uid() if os.geteuid() == 0 and "uid" not in limits.skip else -1
    status_r, status_w = os.pipe()
    try:
        workdir = os.path.join(root, "work")
        os.mkdir(workdir, 0o700)
        if uid >= 0:  # the child drops to this uid, which must be able to enter (only) its work directory
            os.chmod(root, 0o711)
            os.chown(workdir, uid, uid)
        config = {"status_fd": status_w, "workdir": workdir, "uid": uid, "cpu_s": limits.cpu_s,
                  "memory_bytes": limits.memory_mb * 1024 * 1024, "file_bytes": limits.output_bytes,
                  "disk_bytes": limits.disk_mb * 1024 * 1024,
                  "skip": list(limits.skip), "require": _requirements(limits.require)}  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [sys.executable, "-I", "-S", _CHILD, json.dumps(config)]
        with open(os.path.join(root, "output.txt"), "w+b") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                    env=env, start_new_session=True, close_fds=True, pass_fds=(status_w,))  # fmt: skip
            os.close(status_w)
            status_w = -1
            timed_out = False
            try:
                proc.communicate(source.encode("utf-8", errors="replace"), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _kill_group(proc.pid)
            returncode = None if timed_out else proc.returncode
            out.seek(0)
            output = out.read(limits.output_bytes).decode("utf-8", errors="replace")
        status = json.loads(_read_all(status_r) or b"{}")
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        with _uids_lock:
            _uids_in_use.discard(uid)
        shutil.rmtree(root, ignore_errors=True)
    if "error" in status or "layers" not in status:
        raise RuntimeError(f"the sandbox could not be set up: {status.get('error') or output[-2000:]!r}")
    layers = tuple(status["layers"])
    if status.get("missing") or returncode == _REFUSED_EXIT:
        names = [limits.require[i] for i in status.get("missing", [])]
        raise SandboxUnavailable(
            f"refusing to run the program: required {names} but only {layers} held on this machine "
            "(see SandboxLimits.require and docs/tasks.md for which layer holds where)"
        )
    network = "netns" if "netns" in layers else "seccomp" if "seccomp" in layers else "audit-hook"
    return SandboxResult(passed=returncode == 0, returncode=returncode, timed_out=timed_out, output=output,
                         network=network, pid=proc.pid, layers=layers, uid=uid)  # fmt: skip


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None) -> list[SandboxResult]:
    """Run many programs, at most ``limits.max_workers`` at a time, results in input order."""
    limits = limits or SandboxLimits()
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(limits.max_workers, len(sources)))) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
