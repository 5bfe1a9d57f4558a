"""Entry point of a sandboxed run (executed as a script by :mod:`peft_svf.tasks.sandbox`, never imported).

Usage: ``python -I -S _sandbox_child.py CONFIG_JSON`` with the program's source on stdin.

Everything this script needs is imported first, while it can still read the standard library.
Then, before a single line of the program runs, it stacks operating-system layers, each one
skipped (and reported missing) where the kernel refuses it:

1. namespaces: ``unshare`` of a user namespace (unless root), PID, network, mount, IPC and UTS
   namespaces; with a PID namespace this process forks and stays outside as a supervisor that
   relays the exit status, while the program becomes pid 1 of an otherwise empty namespace;
2. mounts (mount namespace): ``pivot_root`` into a minimal read-only root holding only the
   interpreter's files and shared-library directories, the standard library without
   site-packages, ``/dev/null``, ``/dev/zero``, ``/dev/urandom``, the work directory (a private
   tmpfs of ``disk_bytes``, read-write) and, with a PID namespace, a fresh ``/proc`` showing only
   the program;
3. resource limits, no_new_privs, Landlock (read-write only in the work directory, read-only in
   the standard library minus site-packages; no TCP; no signals or abstract sockets outside);
4. the privilege drop: as root to the per-program uid chosen by the parent; in a user namespace
   every capability is dropped;
5. a seccomp filter refusing sockets, process creation, exec, signals to other processes (also
   through ``F_SETOWN``/``F_SETSIG``), scheduling changes of other processes, SysV IPC and POSIX
   message queues, ptrace, namespace and mount calls, keyrings, bpf, io_uring and more;
6. the old Python audit hook, as one more (weak) layer.

The layers that held are reported to the parent on a pipe that is closed before the program
runs (so the program cannot forge the report); if a layer the parent requires is missing the
program is not run at all (exit status 97).
"""

import builtins
import importlib.util
import json
import os
import posix
import resource
import signal
import sys

# Modules a test program commonly imports; imported now so that they stay usable after the drop.
_PRELOAD = ["abc", "array", "bisect", "calendar", "cmath", "collections", "collections.abc", "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "numbers", "operator", "random", "re", "statistics", "string", "textwrap", "types", "typing", "unicodedata", "_strptime", "struct", "fnmatch", "pprint", "traceback", "contextlib", "warnings", "socket"]
for _name in _PRELOAD:
    __import__(_name)

_spec = importlib.util.spec_from_file_location("_peft_svf_sandbox_syscalls", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_syscalls.py"))
sc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)

REFUSED_EXIT = 97  # a required layer is missing: the program was not run
ERROR_EXIT = 98  # setting the sandbox up failed: the program was not run
# Audit events that start processes, signal others, load native code or touch the network.
_BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "ctypes.")
_BLOCKED_EVENTS = {"os.system", "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "os.startfile", "_posixsubprocess"}
# Audit events that modify the file system; their path arguments must lie inside the work directory.
_FS_EVENTS = {
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
    "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.chflags",
}  # fmt: skip
_NAMESPACES = {"pidns": sc.CLONE_NEWPID, "netns": sc.CLONE_NEWNET, "mountns": sc.CLONE_NEWNS,
               "ipcns": sc.CLONE_NEWIPC | sc.CLONE_NEWUTS}  # fmt: skip
_DENIED = [
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "sendto", "sendmsg", "sendmmsg",
    "recvmmsg", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "kcmp", "process_madvise", "process_mrelease", "migrate_pages", "move_pages", "unshare",
    "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "clone", "clone3", "fork", "vfork", "execve",
    "execveat", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "setsid", "setpgid",
    "syslog", "acct", "quotactl", "mknod", "mknodat", "uselib", "vhangup", "iopl", "ioperm",
    # metadata changes, which Landlock does not cover: no chmod/chown/utime/xattr anywhere
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes",
    "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr",
    "lremovexattr", "fremovexattr", "removexattrat",
    # SysV IPC and POSIX message queues: objects that outlive the program where there is no IPC namespace
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
    "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
]  # fmt: skip
# ioctls: faking terminal input; making another process the owner of a socket's SIGIO/SIGURG
_TIOCSTI, _TIOCLINUX, _FIOSETOWN, _SIOCSPGRP = 0x5412, 0x541C, 0x8901, 0x8902
# fcntl: F_SETOWN, F_SETSIG, F_SETOWN_EX (a file that signals another process, any signal, when ready)
_F_SETOWN, _F_SETSIG, _F_SETOWN_EX = 8, 10, 15
_PRIO_PROCESS, _IOPRIO_WHO_PROCESS = 0, 1


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _unshare(skip: set[str], layers: list[str]) -> None:
    """Enter fresh namespaces: all at once when the kernel allows it, else each one that it allows."""
    wanted = {name: flag for name, flag in _NAMESPACES.items() if name not in skip}
    user = 0 if os.geteuid() == 0 or "userns" in skip else sc.CLONE_NEWUSER
    uid, gid = os.getuid(), os.getgid()
    try:
        sc.unshare(user | sum(wanted.values()))
        got = list(wanted)
    except OSError:
        got = []
        if user:
            try:
                sc.unshare(user)
            except OSError:
                return  # unprivileged and no user namespace: no namespace at all
        for name, flag in wanted.items():
            try:
                sc.unshare(flag)
                got.append(name)
            except OSError:
                pass
    if user:
        layers.append("userns")
        # map this user to itself (files it creates keep their owner); no setgroups, as the kernel asks
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    layers.extend(got)


def _supervise(status_fd: int) -> None:
    """Fork; the child (pid 1 of the new PID namespace) returns, this process relays its exit status."""
    pid = os.fork()
    if pid == 0:
        return
    os.close(status_fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: die of the same one, so the parent sees the same status
        _limit(resource.RLIMIT_CORE, 0)
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _bind(source: str, root: str, attrs: int) -> None:
    """Bind ``source`` at the same path under ``root`` with mount attributes ``attrs`` (recursively)."""
    target = root + source
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
    sc.mount_setattr(target, attrs, 0, recursive=True)


def _interpreter_files(stdlib: str) -> tuple[list[str], list[str]]:
    """What the running interpreter has mapped, outside the standard library: the directories of its
    shared libraries (later native imports load more from there) and its other files (the binary,
    locale data). A directory holding the standard library (with its site-packages) is never bound."""
    with open("/proc/self/maps") as maps:
        mapped = {line.split(None, 5)[5].strip() for line in maps if " /" in line}
    files = {os.path.realpath(p) for p in mapped if os.path.isfile(p) and not _under(p, stdlib)}
    dirs = {os.path.dirname(f) for f in files if ".so" in os.path.basename(f)}
    dirs = {d for d in dirs if not _under(stdlib, d)}
    return sorted(dirs), sorted(f for f in files if not any(_under(f, d) for d in dirs))


def _mount_layer(workdir: str, stdlib: str, new_proc: bool, disk_bytes: int, owner: tuple[int, int]) -> None:
    """Pivot into a minimal root: an empty read-only tmpfs holding only the interpreter's files and
    libraries, the standard library without site-packages, /dev/null, /dev/zero, /dev/urandom (all
    read-only), the work directory (a private tmpfs of ``disk_bytes``) and, with a PID namespace, a
    fresh /proc. Nothing else of the machine (checkout, virtualenv, /etc, homes, /tmp) is reachable."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    new = workdir  # any directory of this private namespace serves as the new root's mount point
    sc.mount("tmpfs", new, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=1m,mode=755")
    try:
        _build_root(new, workdir, stdlib, new_proc, disk_bytes, owner)
        os.chdir(new)
        sc.syscall("pivot_root", b".", b".")
    except OSError:  # back to the machine's root with the work directory uncovered: the layer is missing
        os.chdir("/")
        sc.syscall("umount2", new.encode(), 2)  # MNT_DETACH, with everything mounted below it
        raise
    try:
        sc.syscall("umount2", b".", 2)  # the old root, now stacked on the new one
    except OSError as error:  # neither root is usable any more: the sandbox fails, the program never runs
        raise RuntimeError(f"detaching the old root failed: {error}") from error
    os.chdir("/")


def _build_root(new: str, workdir: str, stdlib: str, new_proc: bool, disk_bytes: int, owner: tuple[int, int]) -> None:
    read_only = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
    dirs, files = _interpreter_files(stdlib)
    for path in [*dirs, *files, stdlib]:
        _bind(path, new, read_only)
    for name in ("site-packages", "dist-packages"):  # third-party packages that may live in the stdlib
        if os.path.isdir(os.path.join(stdlib, name)):
            sc.mount("tmpfs", new + os.path.join(stdlib, name), "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV,
                     "size=4k,mode=555")  # fmt: skip
    for device in ("/dev/null", "/dev/zero", "/dev/urandom"):
        _bind(device, new, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID)
    os.makedirs(new + workdir)
    sc.mount("tmpfs", new + workdir, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
             f"size={disk_bytes},mode=700,uid={owner[0]},gid={owner[1]}")  # fmt: skip
    if new_proc:
        os.mkdir(new + "/proc")
        sc.mount("proc", new + "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sc.mount_setattr(new, sc.MOUNT_ATTR_RDONLY, 0, recursive=False)


def _stdlib_entries(stdlib: str) -> list[str]:
    """The standard library's files and packages, without the third-party packages that may live in it
    (nor links leading out of the mount layer's root, e.g. Debian's sitecustomize.py into /etc)."""
    return [e.path for e in os.scandir(stdlib)
            if e.name not in ("site-packages", "dist-packages") and os.path.exists(e.path)]  # fmt: skip


def _seccomp_rules(pid: int) -> dict:
    rules: dict = dict.fromkeys(_DENIED)
    for name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        rules[name] = ("allow_if", 0, [pid])  # signals only to itself
    # scheduling and limits of itself only (pid 0 means the caller): never slow another process down
    for name in ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
        rules[name] = ("allow_if", 0, [0, pid])
    rules["setpriority"] = [("allow_if", 0, [_PRIO_PROCESS]), ("allow_if", 1, [0, pid])]
    rules["ioprio_set"] = [("allow_if", 0, [_IOPRIO_WHO_PROCESS]), ("allow_if", 1, [0, pid])]
    rules["ioctl"] = ("deny_if", 1, [_TIOCSTI, _TIOCLINUX, _FIOSETOWN, _SIOCSPGRP])
    rules["fcntl"] = ("deny_if", 1, [_F_SETOWN, _F_SETSIG, _F_SETOWN_EX])
    return rules


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


def _isolate(config: dict, layers: list[str]) -> None:
    """Stack every layer not in ``config["skip"]``; append the name of each one that held to ``layers``."""
    skip, workdir = set(config["skip"]), config["workdir"]
    stdlib = os.path.dirname(os.__file__)
    _unshare(skip, layers)
    if "pidns" in layers:
        _supervise(config["status_fd"])
    if "mountns" in layers:
        try:
            owner = (config["uid"], config["uid"]) if config["uid"] >= 0 else (os.getuid(), os.getgid())
            _mount_layer(workdir, stdlib, "pidns" in layers, config["disk_bytes"], owner)
        except OSError:
            layers.remove("mountns")
    _limit(resource.RLIMIT_CPU, config["cpu_s"])
    _limit(resource.RLIMIT_FSIZE, config["file_bytes"])
    _limit(resource.RLIMIT_CORE, 0)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    abi = 0 if "landlock" in skip else sc.landlock_abi()
    if abi:
        layers.extend(sc.landlock_restrict(read_write=[workdir], read_only=_stdlib_entries(stdlib), list_only=[stdlib], abi=abi))
    if config["uid"] >= 0:
        os.setgroups([])
        os.setresgid(config["uid"], config["uid"], config["uid"])
        os.setresuid(config["uid"], config["uid"], config["uid"])
        layers.append("uid")
    elif "userns" in layers:
        sc.drop_capabilities()
    if "pidns" in layers:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    _limit(resource.RLIMIT_NPROC, 0)  # no new processes or threads for this (now unprivileged) user
    layers.append("rlimits")
    if "seccomp" not in skip and sc.SYSCALLS is not None:
        sc.install_seccomp(sc.seccomp_filter(_seccomp_rules(os.getpid())))
        layers.append("seccomp")
    os.chdir(workdir)


def main() -> None:
    config = json.loads(sys.argv[1])
    status_fd = config["status_fd"]
    source = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    layers: list[str] = []
    try:
        _isolate(config, layers)
    except Exception as error:  # reported to the parent, which raises: the program never runs
        os.write(status_fd, json.dumps({"layers": layers, "error": f"{type(error).__name__}: {error}"}).encode())
        os._exit(ERROR_EXIT)
    if "audit-hook" not in config["skip"]:
        _install_guard(config["workdir"])
        layers.append("audit-hook")
    # indices of the requirements (each a list of alternatives, each a list of layers) nothing met
    missing = [i for i, group in enumerate(config["require"]) if not any(set(alt) <= set(layers) for alt in group)]
    os.write(status_fd, json.dumps({"layers": layers, "missing": missing}).encode())
    os.close(status_fd)
    if missing:
        os._exit(REFUSED_EXIT)
    for module in (os, posix):
        module._exit = _refuse_exit
        module.abort = _refuse_exit
    _limit(resource.RLIMIT_AS, config["memory_bytes"])
    sys.argv = ["program.py"]
    code = compile(source, "program.py", "exec")  # a SyntaxError fails the program like any other error
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except SystemExit as exit_:
        # Exiting early, even with status 0, means the tests after the program never ran. (No exit
        # that skips the interpreter's shutdown is kept reachable; the status stays the program's
        # own word all the same: see SandboxResult.)
        sys.stderr.write(f"sandbox: the program called exit({exit_.code!r})\n")
        raise SystemExit(3) from None
    sys.stdout.flush()


if __name__ == "__main__":
    main()
