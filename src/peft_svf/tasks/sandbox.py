"""Run model-written Python in a separate, limited process: the only place peft-svf executes generated code.

An RL policy tries anything that raises its reward, so the code rewards must survive programs that
loop forever, fork, allocate without bound, open sockets, write or delete files elsewhere or
flood their output. Each program runs in a fresh process (``python -I -S``) with, layered:

- a wall-clock limit enforced here (the whole process group is killed) and a CPU-time limit
  (``RLIMIT_CPU``);
- an address-space limit (``RLIMIT_AS``) and an output/file-size limit (``RLIMIT_FSIZE``; output
  goes to a file, never into this process's memory, and only ``output_bytes`` are read back);
- no new processes or threads (``RLIMIT_NPROC = 0`` for the unprivileged user; process creation
  is also refused by an audit hook), and its own process group that is killed afterwards;
- no network: a fresh network namespace (``unshare(CLONE_NEWNET)``, as root, or with a user
  namespace otherwise); where the kernel refuses, socket creation is still refused by the
  audit hook (``SandboxResult.network`` says which held);
- a fresh temporary working directory, removed afterwards; when run as root the program runs as
  ``nobody``, and an audit hook refuses writes, deletes and renames outside that directory.

Python audit hooks are not a security boundary on their own (``ctypes`` is refused for that
reason); the operating-system limits are. This is a guard against accidents and reward hacking
by a policy, not against a determined human attacker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_NOBODY = 65534
_HEADER = "#peft-svf-sandbox network="  # first line the child writes; kept in step with _sandbox_child.py


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one program; the defaults suit MBPP/HumanEval tests (well under a second each)."""

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    output_bytes: int = 64 * 1024
    max_workers: int = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: ``passed`` means it ran to the end and exited with status 0 in time.

    ``pid`` is the program's process (and process-group) id, already killed and reaped.
    """

    passed: bool
    returncode: int | None
    timed_out: bool
    output: str
    network: str
    pid: int


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_program(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run one Python program under ``limits`` and report how it ended; never raises for the program's faults."""
    limits = limits or SandboxLimits()
    root = tempfile.mkdtemp(prefix="peft_svf_sandbox_")
    try:
        workdir = os.path.join(root, "work")
        os.mkdir(workdir)
        program = os.path.join(root, "program.py")
        Path(program).write_text(source, encoding="utf-8")
        if os.geteuid() == 0:  # the child drops to nobody, which must be able to enter its work directory
            os.chmod(root, 0o711)
            os.chown(workdir, _NOBODY, _NOBODY)
        output_file = os.path.join(root, "output.txt")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [sys.executable, "-I", "-S", _CHILD, program, workdir,
                str(limits.memory_mb * 1024 * 1024), str(limits.cpu_s), str(limits.output_bytes)]  # fmt: skip
        with open(output_file, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=workdir, env=env, start_new_session=True, close_fds=True)  # fmt: skip
            timed_out = False
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out, returncode = True, None
            finally:
                _kill_group(proc.pid)
                proc.wait()
        with open(output_file, "rb") as f:
            output = f.read(limits.output_bytes + 256).decode("utf-8", errors="replace")
        network = "audit-hook"
        if output.startswith(_HEADER):
            header, _, output = output.partition("\n")
            network = header.removeprefix(_HEADER)
        output = output[: limits.output_bytes]
        return SandboxResult(passed=returncode == 0, returncode=returncode, timed_out=timed_out,
                             output=output, network=network, pid=proc.pid)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None) -> list[SandboxResult]:
    """Run many programs, at most ``limits.max_workers`` at a time, results in input order."""
    limits = limits or SandboxLimits()
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(limits.max_workers, len(sources)))) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
