"""Entry point of a sandboxed run (executed as a script by :mod:`peft_svf.tasks.sandbox`, never imported).

Order matters: resource limits first, then the network namespace, then the privilege drop, then
the audit hook, and only then the untrusted program. Everything this script needs is imported
before the untrusted code runs, because afterwards the interpreter may not be able to read its
own standard library (when it lives in a directory that the unprivileged user cannot enter).

Usage: python -I -S _sandbox_child.py PROGRAM_FILE WORKDIR MEMORY_BYTES CPU_SECONDS FILE_BYTES
"""

import builtins
import ctypes
import ctypes.util
import os
import posix
import resource
import sys

# Modules a test program commonly imports; imported now so that they stay usable after the drop.
_PRELOAD = ["abc", "array", "bisect", "calendar", "cmath", "collections", "collections.abc", "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "numbers", "operator", "random", "re", "statistics", "string", "textwrap", "types", "typing", "unicodedata"]
for _name in _PRELOAD:
    __import__(_name)

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_NOBODY = 65534
_HEADER = "#peft-svf-sandbox network="
# Audit events that start processes, signal others, load native code or touch the network.
_BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "ctypes.")
_BLOCKED_EVENTS = {"os.system", "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "os.startfile", "_posixsubprocess"}
# Audit events that modify the file system; their path arguments must lie inside the work directory.
_FS_EVENTS = {
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
    "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.chflags",
}  # fmt: skip


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _isolate_network() -> str:
    """Move into a fresh network namespace (no interfaces but a down loopback); say whether it worked."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    return "netns" if libc.unshare(flags) == 0 else "audit-hook"


def _drop_privileges() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)


def _install_guard(workdir: str) -> None:
    real = os.path.realpath
    root = real(workdir)
    busy = [False]

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        resolved = real(os.fsdecode(path))
        return resolved == root or resolved.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
                raise PermissionError(f"sandbox: {event} is not allowed")
            if event == "open":
                path, mode, flags = args
                writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                    flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
                )
                if writing and path is not None and not inside(path):
                    raise PermissionError(f"sandbox: writing {path!r} outside the work directory")
            elif event in _FS_EVENTS:
                for arg in args:
                    if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                        raise PermissionError(f"sandbox: {event} on {arg!r} outside the work directory")
        finally:
            busy[0] = False

    sys.addaudithook(hook)


def _refuse_exit(*_: object) -> None:
    raise PermissionError("sandbox: os._exit/os.abort are not allowed (a program must not skip its tests)")


def main() -> None:
    program_file, workdir, memory, cpu, fsize = sys.argv[1:6]
    with open(program_file, encoding="utf-8") as f:
        source = f.read()
    _limit(resource.RLIMIT_CPU, int(cpu))
    _limit(resource.RLIMIT_FSIZE, int(fsize))
    _limit(resource.RLIMIT_CORE, 0)
    network = _isolate_network()
    _drop_privileges()
    _limit(resource.RLIMIT_NPROC, 0)  # no new processes or threads for this (now unprivileged) user
    _limit(resource.RLIMIT_AS, int(memory))
    os.chdir(workdir)
    sys.stdout.write(f"{_HEADER}{network}\n")  # read (and removed) by the parent
    sys.stdout.flush()
    real_exit = posix._exit
    for module in (os, posix):
        module._exit = _refuse_exit
        module.abort = _refuse_exit
    code = compile(source, "program.py", "exec")
    _install_guard(workdir)
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except SystemExit as exit_:
        # Exiting early, even with status 0, means the tests after the program never ran.
        sys.stderr.write(f"sandbox: the program called exit({exit_.code!r})\n")
        sys.stderr.flush()
        real_exit(3)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
