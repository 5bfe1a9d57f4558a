"""Raw Linux system calls behind the sandbox's isolation layers (seccomp, Landlock, namespaces, mounts).

Written against the kernel ABI with ``ctypes`` so that no new dependency (libseccomp, bubblewrap) is
needed. Stdlib-only and free of package-relative imports on purpose: the sandbox child loads this
file by path (it runs under ``python -I -S`` and must not import torch through ``peft_svf``).
Supports x86_64 and aarch64; elsewhere :data:`SYSCALLS` is ``None`` and every layer that needs a
syscall number reports itself unavailable instead of guessing.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
from collections.abc import Iterable, Sequence

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Syscall numbers (x86_64 from arch/x86/entry/syscalls/syscall_64.tbl, aarch64 from asm-generic/unistd.h).
_COMMON = {
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442,
    "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
    "process_mrelease": 448, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
}  # fmt: skip
_X86_64 = _COMMON | {
    "ioctl": 16, "socket": 41, "connect": 42, "accept": 43, "sendto": 44, "sendmsg": 46, "bind": 49,
    "listen": 50, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62,
    "ptrace": 101, "syslog": 103, "setpgid": 109, "setsid": 112, "capset": 126, "rt_sigqueueinfo": 129,
    "mknod": 133, "uselib": 134, "vhangup": 153, "pivot_root": 155, "prctl": 157, "acct": 163,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172, "ioperm": 173,
    "init_module": 175, "delete_module": 176, "quotactl": 179, "chroot": 161, "tkill": 200, "tgkill": 234,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "migrate_pages": 256,
    "mknodat": 259, "unshare": 272, "move_pages": 279, "accept4": 288, "rt_tgsigqueueinfo": 297,
    "perf_event_open": 298, "recvmmsg": 299, "prlimit64": 302, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "sendmmsg": 307, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "seccomp": 317, "kexec_file_load": 320,
    "bpf": 321, "execveat": 322, "userfaultfd": 323, "chmod": 90, "fchmod": 91, "chown": 92, "fchown": 93,
    "lchown": 94, "utime": 132, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197,
    "lremovexattr": 198, "fremovexattr": 199, "utimes": 235, "fchownat": 260, "futimesat": 261,
    "fchmodat": 268, "utimensat": 280, "fcntl": 72, "setpriority": 141, "sched_setparam": 142,
    "sched_setscheduler": 144, "sched_setaffinity": 203, "ioprio_set": 251, "sched_setattr": 314,
    "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "semtimedop": 220, "mq_open": 240,
    "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
}  # fmt: skip
_AARCH64 = _COMMON | {
    "ioctl": 29, "mknodat": 33, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51, "vhangup": 58,
    "quotactl": 60, "acct": 89, "capset": 91, "unshare": 97, "kexec_load": 104, "init_module": 105,
    "delete_module": 106, "syslog": 116, "ptrace": 117, "kill": 129, "tkill": 130, "tgkill": 131,
    "rt_sigqueueinfo": 138, "reboot": 142, "setpgid": 154, "setsid": 157, "prctl": 167, "socket": 198,
    "socketpair": 199, "bind": 200, "listen": 201, "accept": 202, "connect": 203, "sendto": 206,
    "sendmsg": 211, "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220, "execve": 221,
    "swapon": 224, "swapoff": 225, "migrate_pages": 238, "move_pages": 239, "rt_tgsigqueueinfo": 240,
    "perf_event_open": 241, "accept4": 242, "recvmmsg": 243, "prlimit64": 261, "name_to_handle_at": 264,
    "open_by_handle_at": 265, "setns": 268, "sendmmsg": 269, "process_vm_readv": 270,
    "process_vm_writev": 271, "kcmp": 272, "finit_module": 273, "seccomp": 277, "bpf": 280,
    "execveat": 281, "userfaultfd": 282, "kexec_file_load": 294, "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7,
    "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16, "fchmod": 52, "fchmodat": 53, "fchownat": 54,
    "fchown": 55, "utimensat": 88, "fcntl": 25, "ioprio_set": 30, "sched_setparam": 118,
    "sched_setscheduler": 119, "sched_setaffinity": 122, "setpriority": 140, "sched_setattr": 274,
    "mq_open": 180, "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
    "mq_getsetattr": 185, "msgget": 186, "msgctl": 187, "msgrcv": 188, "msgsnd": 189, "semget": 190,
    "semctl": 191, "semtimedop": 192, "semop": 193, "shmget": 194, "shmctl": 195, "shmat": 196, "shmdt": 197,
}  # fmt: skip
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
MACHINE = os.uname().machine
SYSCALLS: dict[str, int] | None = {"x86_64": _X86_64, "aarch64": _AARCH64}.get(MACHINE)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP = 0x10000000, 0x20000000, 0x40000000, 0x02000000
NAMESPACE_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def syscall(name: str, *args: int | ctypes._CData | None) -> int:
    """Call a syscall by name; raise ``OSError`` on failure (and on an architecture without a table)."""
    if SYSCALLS is None or name not in SYSCALLS:
        raise OSError(38, f"{name}: no syscall number for {MACHINE}")
    c_args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = _libc.syscall(ctypes.c_long(SYSCALLS[name]), *c_args)
    if result < 0:
        raise _errno_error(name)
    return result


def unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise _errno_error(f"unshare({flags:#x})")


def prctl(option: int, arg: int = 0) -> None:
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0)) != 0:  # fmt: skip
        raise _errno_error(f"prctl({option})")


PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


# --- mounts -------------------------------------------------------------------------------------------
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000


def _enc(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)) != 0:
        raise _errno_error(f"mount({source!r} on {target!r})")


def mount_setattr(path: str, attr_set: int, attr_clr: int, recursive: bool) -> None:
    """Change mount flags of ``path`` (and every mount below it when ``recursive``), Linux >= 5.12."""
    attr = struct.pack("=QQQQ", attr_set, attr_clr, 0, 0)
    syscall("mount_setattr", _AT_FDCWD, ctypes.c_char_p(os.fsencode(path)), _AT_RECURSIVE if recursive else 0,
            ctypes.c_char_p(attr), len(attr))  # fmt: skip


# --- capabilities -------------------------------------------------------------------------------------
def drop_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets (what a user-namespace creator holds)."""
    header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    syscall("capset", ctypes.c_char_p(header), ctypes.c_char_p(bytes(24)))


# --- Landlock -----------------------------------------------------------------------------------------
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_CHAR, _FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_FS_MAKE_REG, _FS_MAKE_SOCK, _FS_MAKE_FIFO, _FS_MAKE_BLOCK, _FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2  # ABI 6
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is absent or disabled."""
    try:
        return syscall("landlock_create_ruleset", None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    except OSError:
        return 0


def landlock_restrict(read_write: Sequence[str], read_only: Iterable[str], list_only: Iterable[str],
                      abi: int) -> tuple[str, ...]:  # fmt: skip
    """Confine this process (and any future child) to the given paths and what lies beneath them.

    ``read_write`` paths may be read, written, created in and deleted from; ``read_only`` ones
    read; ``list_only`` directories listed (names only). Every filesystem right the kernel knows
    is handled, so whatever is not granted is refused; with ABI >= 4 all TCP bind/connect is
    refused too, with ABI >= 6 abstract unix sockets and signals to processes outside this
    domain. Needs no_new_privs (or CAP_SYS_ADMIN). Returns the layers set up (``landlock`` and
    maybe ``landlock-net``, ``landlock-scope``).
    """
    fs = (1 << 13) - 1
    if abi >= 2:
        fs |= _FS_REFER
    if abi >= 3:
        fs |= _FS_TRUNCATE
    if abi >= 5:
        fs |= _FS_IOCTL_DEV
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = syscall("landlock_create_ruleset", ctypes.c_char_p(attr), len(attr), 0)
    try:
        write = fs & ~(_FS_EXECUTE | _FS_MAKE_CHAR | _FS_MAKE_BLOCK | _FS_MAKE_SOCK | _FS_MAKE_FIFO | _FS_IOCTL_DEV)
        rules = ([(path, write) for path in read_write] + [(path, _FS_READ_FILE | _FS_READ_DIR) for path in read_only]
                 + [(path, _FS_READ_DIR) for path in list_only])  # fmt: skip
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= _FILE_RIGHTS  # a file takes only file rights (else EINVAL)
                beneath = struct.pack("=Qi", rights, fd)
                syscall("landlock_add_rule", ruleset, 1, ctypes.c_char_p(beneath), 0)  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)
        syscall("landlock_restrict_self", ruleset, 0)
    finally:
        os.close(ruleset)
    return ("landlock",) + (("landlock-net",) if net else ()) + (("landlock-scope",) if scoped else ())


# --- seccomp ------------------------------------------------------------------------------------------
_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_ERRNO = 0x00050000


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _arg_low(index: int) -> int:
    return 16 + 8 * index + (0 if struct.pack("=H", 1)[0] == 1 else 4)  # low 32 bits of args[index]


# A check: ("allow_if", arg, values) (refused unless the arg's low 32 bits equal one of the values),
# ("deny_if", arg, values) or ("deny_if_any_bit", arg, mask). A rule: syscall name -> None (always
# refused), one check, or a list of checks that must all let the call through.
Check = tuple[str, int, Sequence[int] | int]
Rule = Check | list[Check] | None


def _check_block(check: Check, deny: bytes) -> list[bytes]:
    """BPF for one check: jumps to its own ``deny`` when the check refuses, else falls through past it."""
    kind, arg, values = check
    load = _insn(_LD_ABS_W, _arg_low(arg))
    if kind == "deny_if_any_bit":
        return [load, _insn(_JSET, int(values), jt=0, jf=1), deny]
    values = list(values)  # type: ignore[arg-type]
    n = len(values)
    if kind == "allow_if":  # jeq v_i: on a match jump past the remaining compares and the deny
        return [load] + [_insn(_JEQ, v, jt=n - i) for i, v in enumerate(values)] + [deny]
    # deny_if: a match jumps to the deny; no match on the last compare skips it
    return [load] + [_insn(_JEQ, v, jt=n - 1 - i, jf=1 if i == n - 1 else 0) for i, v in enumerate(values)] + [deny]


def seccomp_filter(rules: dict[str, Rule], errno: int = 1) -> bytes:
    """Compile ``rules`` into a classic-BPF seccomp program (refusals return ``-errno``).

    A foreign architecture (e.g. the i386 ABI on x86_64) kills the process; x32 syscalls are refused.
    Syscalls missing from this architecture's table are skipped (they do not exist there).
    """
    if SYSCALLS is None:
        raise OSError(38, f"seccomp: no syscall table for {MACHINE}")
    deny = _insn(_RET, _RET_ERRNO | errno)
    allow = _insn(_RET, RET_ALLOW)
    prog = [_insn(_LD_ABS_W, 4), _insn(_JEQ, _AUDIT_ARCH[MACHINE], jt=1), _insn(_RET, RET_KILL_PROCESS),
            _insn(_LD_ABS_W, 0)]  # fmt: skip
    if MACHINE == "x86_64":
        prog += [_insn(_JGE, 0x40000000, jf=1), deny]
    for name, rule in rules.items():
        if name not in SYSCALLS:
            continue
        if rule is None:
            body = [deny]
        else:
            body = [insn for check in ([rule] if isinstance(rule, tuple) else rule) for insn in _check_block(check, deny)]
            body.append(allow)
        prog += [_insn(_JEQ, SYSCALLS[name], jf=len(body)), *body]
    prog.append(allow)
    return b"".join(prog)


def install_seccomp(program: bytes) -> None:
    """Install a seccomp filter on this thread (needs no_new_privs or CAP_SYS_ADMIN); irreversible."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))  # struct sock_fprog
    syscall("seccomp", 1, 0, ctypes.c_char_p(fprog))  # SECCOMP_SET_MODE_FILTER, no flags
