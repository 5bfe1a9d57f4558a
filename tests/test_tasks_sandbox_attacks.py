"""The sandbox against an attacker: hostile programs, judged by what they did outside, not by their output.

Every hostile program starts by switching the Python audit hook off (through ``gc``, as a real
attacker would), so what stops it is the operating system. The attacks run in four environments:
as root (in this process), as a freshly created unprivileged user (``setpriv``), and both again
under a seccomp filter refusing namespaces as Docker's default profile does (``unshare`` refused).
They are checked against real targets: TCP, UDP and unix-socket (path and abstract) listeners on
this machine, a world-writable fake ``$HOME`` with secrets and a fake project checkout (hashed
before and after), a victim process owned by the same user as the trainer, the trainer (the
runner process) itself and sibling programs of the same ``run_programs`` batch. Single-layer
variants (everything else skipped) show that each layer holds on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from peft_svf.tasks import sandbox_syscalls
from peft_svf.tasks.sandbox import SandboxLimits, SandboxUnavailable, run_programs

RUNNER = Path(__file__).with_name("sandbox_runner.py")
ROOT = os.geteuid() == 0
ENVS = ["root", "unprivileged", "root-unshare-refused", "unprivileged-unshare-refused"]

# Switch the audit hook off, then give the attacks a libc and a way to try things one by one.
PRELUDE = r'''
import ctypes, gc, os, signal, struct, sys, time
for _f in gc.get_objects():
    if getattr(_f, "__name__", "") == "hook" and getattr(_f, "__closure__", None):
        for _c in _f.__closure__:
            if isinstance(_c.cell_contents, list):
                _c.cell_contents[0] = True
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
print("HOOK-OFF", libc.getpid() != 0, flush=True)

def attempt(label, fn):
    try:
        fn()
        print("DID", label, flush=True)
    except BaseException as e:
        print("FAILED", label, type(e).__name__, e, flush=True)

def check(result, what):
    if result < 0:
        raise OSError(ctypes.get_errno(), what)
    return result
'''

NETWORK = PRELUDE + r'''
import socket
def tcp():
    s = socket.create_connection(("127.0.0.1", @TCP@), timeout=1)
    s.sendall(b"PWNED")
def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"PWNED", ("127.0.0.1", @UDP@))
def unix_path():
    s = socket.socket(socket.AF_UNIX)
    s.connect("@UNIX@")
    s.sendall(b"PWNED")
def unix_abstract():
    s = socket.socket(socket.AF_UNIX)
    s.connect("\0@ABSTRACT@")
    s.sendall(b"PWNED")
def raw_tcp():  # libc's socket()/connect(), no socket module
    fd = check(libc.socket(2, 1, 0), "socket")
    addr = struct.pack("=H", 2) + struct.pack("!H", @TCP@) + bytes([127, 0, 0, 1]) + bytes(8)
    check(libc.connect(fd, addr, 16), "connect")
    libc.write(fd, b"PWNED", 5)
def raw_udp():
    fd = check(libc.syscall(41, 2, 2, 0), "socket")
    addr = struct.pack("=H", 2) + struct.pack("!H", @UDP@) + bytes([127, 0, 0, 1]) + bytes(8)
    check(libc.sendto(fd, b"PWNED", 5, 0, addr, 16), "sendto")
for name, fn in [("tcp", tcp), ("udp", udp), ("unix-path", unix_path), ("unix-abstract", unix_abstract),
                 ("raw-tcp", raw_tcp), ("raw-udp", raw_udp)]:
    attempt(name, fn)
'''

FILES = PRELUDE + r'''
H, P, D = "@HOME@", "@PROJECT@", "@DROP@"
def show(data):
    print("CONTENT", data, flush=True)
def dir_fd_read():
    show(os.read(os.open("id_rsa", os.O_RDONLY, dir_fd=os.open(H + "/.ssh", os.O_RDONLY)), 200))
def libc_read():
    fd = check(libc.syscall(257, -100, (H + "/.cache/huggingface/token").encode(), 0, 0), "openat")
    buf = ctypes.create_string_buffer(200)
    libc.read(fd, buf, 200)
    show(buf.value)
def leak():
    with open(D + "/leak.txt", "w") as f:
        f.write("leaked:")
    os.chmod(D + "/leak.txt", 0o666)
    with open(D + "/leak.txt", "a") as f:
        f.write(open(H + "/.cache/huggingface/token").read())
def hardlink():
    os.link(P + "/src/peft_svf/__init__.py", "hl.py")
    with open("hl.py", "a") as f:
        f.write("import os  # planted")
def symlink():
    os.symlink(P + "/src/peft_svf/__init__.py", "sl.py")
    with open("sl.py", "a") as f:
        f.write("import os  # planted")
def rmtree():
    os.listdir(H)  # os.walk would silently see nothing
    for root, dirs, files in os.walk(H, topdown=False):
        for name in files:
            os.remove(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
attempts = [
    ("read ssh key", lambda: show(open(H + "/.ssh/id_rsa").read())),
    ("read hf token", lambda: show(open(H + "/.cache/huggingface/token").read())),
    ("read via dir_fd", dir_fd_read), ("read via raw openat", libc_read),
    ("read via /proc/self/root", lambda: show(open("/proc/self/root" + H + "/.ssh/id_rsa").read())),
    ("list home", lambda: show(os.listdir(H))),
    ("append to project", lambda: open(P + "/src/peft_svf/__init__.py", "a").write("import os  # planted")),
    ("create in drop dir", lambda: open(D + "/created.txt", "w").write("x")),
    ("leak token", leak), ("create in /tmp", lambda: open("/tmp/@TMPNAME@", "w").write("x")),
    ("write via dir_fd", lambda: os.write(os.open("planted.py", os.O_WRONLY | os.O_CREAT, 0o644,
                                                    dir_fd=os.open(P + "/src/peft_svf", os.O_RDONLY)), b"x")),
    ("unlink via dir_fd", lambda: os.unlink("id_rsa", dir_fd=os.open(H + "/.ssh", os.O_RDONLY))),
    ("rename token", lambda: os.rename(H + "/.cache/huggingface/token", H + "/stolen")),
    ("truncate project", lambda: os.truncate(P + "/src/peft_svf/__init__.py", 0)),
    ("chmod key", lambda: os.chmod(H + "/.ssh/id_rsa", 0o777)),
    ("utime key", lambda: os.utime(H + "/.ssh/id_rsa", (0, 0))),
    ("hardlink", hardlink), ("symlink", symlink), ("rmtree home", rmtree),
    ("mkdir in home", lambda: os.mkdir(H + "/new")),
]
for label, fn in attempts:
    attempt(label, fn)
'''

# Signals aimed only at the named pids and this runner's children: a layer that fails must not
# let a test kill anything else on a shared machine. ``kill(-1)`` only where the program is not root.
SIGNALS = PRELUDE + r'''
V, R = @VICTIM@, @RUNNER_PID@
def pidfd_kill(pid):
    fd = check(libc.syscall(434, pid, 0), "pidfd_open")
    check(libc.syscall(424, fd, 9, None, 0), "pidfd_send_signal")
def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with open(f"/proc/{entry}/status") as f:
                if f"PPid:\t{pid}\n" in f.read():
                    found.append(int(entry))
    return found
def proc_scan():
    victims = [V, R] + [c for p in children(R) for c in [p, *children(p)] if c != os.getpid()]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
def ptrace():
    check(libc.ptrace(16, V, None, None), "ptrace(PTRACE_ATTACH)")
def sigio(pid):  # a pipe that signals its owner (F_SETOWN) with SIGKILL (F_SETSIG) once written to
    import fcntl
    r, w = os.pipe()
    fcntl.fcntl(r, 8, pid)
    fcntl.fcntl(r, 10, 9)
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
    os.write(w, b"x")
def sigio_ex(pid):  # the same through F_SETOWN_EX (struct f_owner_ex: F_OWNER_PID, pid)
    import fcntl
    r, w = os.pipe()
    check(libc.fcntl(r, 15, struct.pack("=ii", 1, pid)), "F_SETOWN_EX")
    fcntl.fcntl(r, 10, 9)
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
    os.write(w, b"x")
attempts = [
    ("kill victim", lambda: os.kill(V, signal.SIGKILL)), ("kill runner", lambda: os.kill(R, signal.SIGKILL)),
    ("raw kill victim", lambda: check(libc.syscall(62, V, 9), "kill")),
    ("tgkill victim", lambda: check(libc.syscall(234, V, V, 9), "tgkill")),
    ("pidfd victim", lambda: pidfd_kill(V)), ("pidfd runner", lambda: pidfd_kill(R)),
    ("ptrace victim", ptrace), ("proc scan", proc_scan),
    ("prlimit victim", lambda: check(libc.syscall(302, V, 7, None, ctypes.create_string_buffer(16)), "prlimit")),
    ("sigio victim", lambda: sigio(V)), ("sigio runner", lambda: sigio(R)), ("sigio_ex victim", lambda: sigio_ex(V)),
]
if @BROAD@:
    attempts += [("kill -1", lambda: os.kill(-1, signal.SIGKILL)), ("killpg 0", lambda: os.killpg(0, signal.SIGKILL))]
for label, fn in attempts:
    attempt(label, fn)
'''

# One killer and two victims in the same run_programs batch.
SIBLING_VICTIM = r'''
import os, time
with open("mine.txt", "w") as f:
    f.write("@SECRET@")
time.sleep(2.0)
assert open("mine.txt").read() == "@SECRET@"
print("SURVIVED")
'''
SIBLING_KILLER = SIGNALS.replace("attempts = [", "time.sleep(0.7)\nattempts = [", 1) + r'''
import glob
def show(data):
    print("CONTENT", data, flush=True)
for path in glob.glob("/tmp/peft_svf_sandbox_*/work/*") + glob.glob("/proc/[0-9]*/cwd/mine.txt"):
    attempt("read " + path, lambda path=path: show(open(path).read()))
def rewrite():
    for path in glob.glob("/tmp/peft_svf_sandbox_*/work/mine.txt"):
        open(path, "w").write("overwritten")
attempt("overwrite sibling", rewrite)
'''


# Real files outside the hidden places (/tmp, homes, ...): the checkout, the venv's packages (a
# dataset with canonical solutions would be a reward hack), /etc. Each one read is shown by its hash.
OUTSIDE = PRELUDE + r"""
import hashlib
def show_hash(path):
    with open(path, "rb") as f:
        print("CONTENT", hashlib.sha256(f.read()).hexdigest(), flush=True)
for path in @PATHS@:
    attempt("read " + path, lambda path=path: show_hash(path))
for path in @DIRS@:
    attempt("list " + path, lambda path=path: print("CONTENT", sorted(os.listdir(path)), flush=True))
"""

# Persistent SysV IPC objects and POSIX message queues outlive the program where there is no IPC
# namespace: each could pin memory on the host.
IPC = PRELUDE + r"""
libc.shmat.restype = ctypes.c_void_p
def shm():
    sid = check(libc.shmget(0, 1 << 20, 0o1000 | 0o600), "shmget")  # IPC_PRIVATE, IPC_CREAT
    addr = libc.shmat(sid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "shmat")
    ctypes.memset(addr, 1, 1 << 20)
attempts = [("shm", shm), ("sem", lambda: check(libc.semget(0, 1, 0o1000 | 0o600), "semget")),
            ("msg", lambda: check(libc.msgget(0, 0o1000 | 0o600), "msgget")),
            ("mq", lambda: check(libc.mq_open(b"/@MQ@", 0o100 | 2, 0o600, None), "mq_open"))]
for label, fn in attempts:
    attempt(label, fn)
"""

# Slowing the trainer (or any process of its uid) down for good: priorities, CPU affinity, I/O priority.
PRIORITY = PRELUDE + r"""
V, R = @VICTIM@, @RUNNER_PID@
attempts = [("setpriority victim", lambda: os.setpriority(os.PRIO_PROCESS, V, 19)),
            ("setpriority runner", lambda: os.setpriority(os.PRIO_PROCESS, R, 19)),
            ("setpriority user", lambda: os.setpriority(os.PRIO_USER, 0, 19)),
            ("setpriority group", lambda: os.setpriority(os.PRIO_PGRP, 0, 19)),
            ("affinity victim", lambda: os.sched_setaffinity(V, {0})),
            ("affinity runner", lambda: os.sched_setaffinity(R, {0})),
            ("scheduler victim", lambda: os.sched_setscheduler(V, os.SCHED_IDLE, os.sched_param(0))),
            ("ioprio victim", lambda: check(libc.syscall(251, 1, V, (3 << 13) | 0), "ioprio_set")),
            ("ioprio user", lambda: check(libc.syscall(251, 3, 0, (3 << 13) | 0), "ioprio_set"))]
os.setpriority(os.PRIO_PROCESS, 0, 5)  # its own priority, affinity and I/O priority stay its own business
os.sched_setaffinity(0, {0})
check(libc.syscall(251, 1, 0, (2 << 13) | 7), "ioprio_set self")
print("OWN", os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)), flush=True)
for label, fn in attempts:
    attempt(label, fn)
"""

# --- environment ---------------------------------------------------------------------------------
def _unprivileged_python() -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3"):
        if candidate and os.access(candidate, os.X_OK):
            path = Path(candidate).resolve()
            if all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents]):
                return str(path)
    return None


@pytest.fixture(scope="module")
def user():
    """A temporary system user (removed afterwards); the current user when not root."""
    if not ROOT:
        yield pwd.getpwuid(os.getuid()).pw_name
        return
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd/setpriv missing: cannot create an unprivileged user on this machine")
    name = f"sbx{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        for pid in _user_processes(name):  # none unless a test failed; this user is ours alone
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        subprocess.run(["userdel", name], check=False)


def _world(path: Path, mode: int) -> Path:
    path.chmod(mode)
    return path


@pytest.fixture
def targets(user):
    """Fresh listeners and world-writable victim files per test, owned by the unprivileged user: DAC
    alone protects nothing, and a test that fails leaves nothing behind for the next."""
    base = _world(Path(tempfile.mkdtemp(prefix="peft_svf_victim_")), 0o777)
    home, project, drop = base / "home", base / "project", base / "drop"
    files = {home / ".ssh" / "id_rsa": f"SECRET-SSH-{uuid.uuid4().hex}",
             home / ".cache" / "huggingface" / "token": f"SECRET-TOKEN-{uuid.uuid4().hex}",
             project / "src" / "peft_svf" / "__init__.py": '"""peft-svf."""\n'}  # fmt: skip
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        _world(path, 0o666)
    drop.mkdir()
    owner = pwd.getpwnam(user)
    for d in base.rglob("*"):
        if d.is_dir():
            _world(d, 0o777)
        os.chown(d, owner.pw_uid, owner.pw_gid)
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = str(base / "listener.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    _world(Path(unix_path), 0o777)
    abstract_name = f"peft_svf_test_{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    for s in (tcp, unix, abstract):
        s.listen(16)
    for s in (tcp, udp, unix, abstract):
        s.setblocking(False)
    secrets = [files[home / ".ssh" / "id_rsa"], files[home / ".cache" / "huggingface" / "token"]]
    t = {"base": base, "home": home, "project": project, "drop": drop, "secrets": secrets,
         "sockets": {"tcp": tcp, "udp": udp, "unix-path": unix, "unix-abstract": abstract},
         "fill": {"@TCP@": str(tcp.getsockname()[1]), "@UDP@": str(udp.getsockname()[1]), "@UNIX@": unix_path,
                  "@ABSTRACT@": abstract_name, "@HOME@": str(home), "@PROJECT@": str(project),
                  "@DROP@": str(drop)}}  # fmt: skip
    yield t
    for s in t["sockets"].values():
        s.close()
    shutil.rmtree(base, ignore_errors=True)


def _snapshot(base: Path) -> dict[str, tuple]:
    """Every path under ``base`` with its mode, owner, mtime and content hash: any change shows."""
    snap = {}
    for path in sorted(base.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
        snap[str(path)] = (st.st_mode, st.st_uid, st.st_mtime_ns, digest)
    return snap


def _received(sockets: dict[str, socket.socket]) -> dict[str, str]:
    """What reached each listener: a pending connection or a datagram is an escape."""
    got = {}
    for name, s in sockets.items():
        try:
            if s.type == socket.SOCK_DGRAM:
                got[name] = repr(s.recv(100))
            else:
                conn, _ = s.accept()
                got[name] = "connection"
                conn.close()
        except BlockingIOError:
            pass
    return got


def _fill(source: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        source = source.replace(key, value)
    return source


def _victim(env: str, user_name: str) -> subprocess.Popen:
    """A process of the same user as the trainer in ``env``, which no program may signal."""
    argv = ["sleep", "300"]
    if env.startswith("unprivileged") and ROOT:
        argv = ["setpriv", "--reuid", user_name, "--regid", user_name, "--clear-groups", *argv]
    return subprocess.Popen(argv)


def _processes_of(results: list[dict]) -> list[str]:
    """Processes still running as the per-program uids of ``results`` (other helpers' runs have others)."""
    uids = {r["uid"] for r in results if r["uid"] >= 0}
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(Path(f"/proc/{entry}/status").read_text().split("Uid:\t")[1].split()[0]) in uids:
                found.append(entry)
    return found


def _user_processes(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-u", name], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def run_in(env: str, user_name: str, jobs: list[dict], home: Path) -> list:
    """Run ``jobs`` (sources + SandboxLimits fields) in ``env``; results as dicts, or {"unavailable": ...}.

    ``root`` runs in this process (the trainer a program may attack is pytest itself);
    ``root-runner`` as root in a runner subprocess (for attacks that may succeed when a layer is
    mutated away: the runner dies, not pytest); the others as described in the module docstring.
    """
    if env.startswith("root") and not ROOT:
        pytest.skip("the root environments need root")
    if env == "root":
        results = []
        old_home = os.environ.get("HOME")
        os.environ["HOME"] = str(home)  # the sandbox hides the trainer's home: make it the fake one
        try:
            for job in jobs:
                sources = [s.replace("@RUNNER_PID@", str(os.getpid())) for s in job["sources"]]
                try:
                    batch = run_programs(sources, SandboxLimits(**job["limits"]))
                    results.append([r.__dict__ for r in batch])
                except SandboxUnavailable as error:
                    results.append({"unavailable": str(error)})
        finally:
            os.environ["HOME"] = old_home or ""
        return results
    python = _unprivileged_python() if env.startswith("unprivileged") else sys.executable
    if python is None:
        pytest.skip("no Python interpreter that an unprivileged user can execute")
    argv = [python, str(RUNNER)]
    if env.endswith("unshare-refused"):
        argv += ["--deny", "unshare"]
    if env.startswith("unprivileged") and ROOT:
        argv = ["setpriv", "--reuid", user_name, "--regid", user_name, "--clear-groups", *argv]
    payload = json.dumps([{"sources": j["sources"], "limits": {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in j["limits"].items()}} for j in jobs])  # fmt: skip
    done = subprocess.run(argv, input=payload, capture_output=True, text=True, timeout=300, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


LIMITS = {"timeout_s": 10.0, "cpu_s": 5, "memory_mb": 256, "output_bytes": 16384}


def _single(program: str, env: str, user_name: str, targets: dict, **limits) -> dict:
    (result,) = run_in(env, user_name, [{"sources": [program], "limits": {**LIMITS, **limits}}], targets["home"])[0]
    assert "HOOK-OFF True" in result["output"], result["output"]  # the attack ran with the audit hook off
    return result


# --- attacks -------------------------------------------------------------------------------------
# Layers that may be switched off (``skip``) to test one alone.
ALL = ("userns", "pidns", "netns", "mountns", "ipcns", "landlock", "uid", "seccomp", "audit-hook")


def _only(*layers: str) -> dict:
    return {"skip": tuple(n for n in ALL if n not in layers), "require": ()}


@pytest.mark.parametrize("env", ENVS)
def test_no_connection_reaches_a_listener(env, user, targets):
    result = _single(_fill(NETWORK, targets["fill"]), env, user, targets)
    assert _received(targets["sockets"]) == {}
    assert "DID" not in result["output"], result["output"]
    assert "seccomp" in result["layers"]


@pytest.mark.parametrize("layers", [("seccomp",), ("netns", "mountns")], ids="+".join)
def test_network_single_layer_holds(layers, user, targets):
    """Each alternative of ASPECTS["network"] stops every connection on its own (as root)."""
    _single(_fill(NETWORK, targets["fill"]), "root", user, targets, **_only(*layers, "uid"))
    assert _received(targets["sockets"]) == {}


def _files_attack(env: str, user_name: str, targets: dict, **limits) -> dict:
    """Run FILES; nothing under the victim tree and no new /tmp file may change, no secret may show."""
    escape = Path("/tmp", f"peft_svf_escape_{uuid.uuid4().hex}")  # fresh: a failed run must not fail the next
    before = _snapshot(targets["base"])
    result = _single(_fill(FILES, {**targets["fill"], "@TMPNAME@": escape.name}), env, user_name, targets, **limits)
    try:
        assert _snapshot(targets["base"]) == before, result["output"]
        assert not escape.exists()
        for secret in targets["secrets"]:
            assert secret not in result["output"]
    finally:
        escape.unlink(missing_ok=True)
    return result


@pytest.mark.parametrize("env", ENVS)
def test_files_outside_are_neither_read_nor_changed(env, user, targets):
    result = _files_attack(env, user, targets)
    assert "DID" not in result["output"], result["output"]


@pytest.mark.parametrize("layers", [("landlock", "seccomp"), ("mountns",)], ids="+".join)
def test_files_single_layer_holds(layers, user, targets):
    """Landlock (with seccomp for the metadata calls it does not cover) or the mount layer, each alone.

    Run as the unprivileged user, so that DAC is no help: every target is that user's own or
    world-writable.
    """
    _files_attack("unprivileged", user, targets, **_only(*layers, "userns", "pidns"))


def _signal_check(env: str, user_name: str, targets: dict, **limits) -> dict:
    victim = _victim(env, user_name)
    try:
        time.sleep(0.2)
        fill = {**targets["fill"], "@VICTIM@": str(victim.pid), "@BROAD@": str(env.startswith("unprivileged"))}
        result = _single(_fill(SIGNALS, fill), env, user_name, targets, **limits)
        assert victim.poll() is None, "the victim process was killed"
        state = Path(f"/proc/{victim.pid}/stat").read_text().split(")")[1].split()[0]
        assert state not in ("T", "t"), "the victim process was stopped (ptrace)"
        return result
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("env", ENVS)
def test_no_signal_reaches_the_trainer_or_its_other_processes(env, user, targets):
    result = _signal_check(env, user, targets)  # the runner surviving is checked by run_in (returncode 0)
    assert "DID" not in result["output"], result["output"]
    assert not _processes_of([result])
    if env.startswith("unprivileged") and ROOT:
        assert _user_processes(user) == []


@pytest.mark.parametrize("layers", [("userns", "pidns"), ("seccomp",), ("landlock",)], ids="+".join)
def test_signals_single_layer_holds(layers, user, targets):
    """PID namespace, seccomp and Landlock's signal scope each hold alone, for a program of the trainer's uid."""
    _signal_check("unprivileged", user, targets, **_only(*layers))


def test_signals_distinct_uid_alone_holds(user, targets):
    """As root, the per-program uid alone keeps the victim (another uid) and the trainer safe."""
    _signal_check("root-runner", user, targets, **_only("uid"))


@pytest.mark.parametrize("env", ENVS)
def test_siblings_survive_and_keep_their_files(env, user, targets):
    victim = _victim(env, user)
    fill = {**targets["fill"], "@VICTIM@": str(victim.pid), "@BROAD@": str(env.startswith("unprivileged"))}
    secrets = [f"SIBLING-{uuid.uuid4().hex}" for _ in range(2)]
    sources = [_fill(SIBLING_KILLER, fill)] + [SIBLING_VICTIM.replace("@SECRET@", s) for s in secrets]
    try:
        (batch,) = run_in(env, user, [{"sources": sources, "limits": {**LIMITS, "max_workers": 3}}], targets["home"])
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    killer, *victims = batch
    assert "HOOK-OFF True" in killer["output"]
    for victim in victims:
        assert victim["passed"], victim["output"]
        assert "SURVIVED" in victim["output"]
    assert not any(s in killer["output"] for s in secrets), killer["output"]
    assert not _processes_of(batch)
    assert len({r["uid"] for r in batch}) == (3 if env.startswith("root") and ROOT else 1)


@pytest.mark.parametrize("env", ENVS)
def test_strict_requirements_refuse_to_run_unprotected(env, user, targets):
    """Asking for a layer the environment lacks refuses the program before any of it runs."""
    missing = "userns" if env.startswith("root") else "uid"  # never both
    if env.endswith("unshare-refused"):
        missing = "netns"
    marker = targets["drop"] / f"ran-{uuid.uuid4().hex}"
    program = f"open({str(marker)!r}, 'w').write('ran')"
    # with nothing else in the way, the program could write the marker if it ran
    skip = ("landlock", "mountns", "audit-hook")
    (result,) = run_in(env, user, [{"sources": [program], "limits": {**LIMITS, "require": (missing,), "skip": skip}}],
                       targets["home"])  # fmt: skip
    assert "unavailable" in result and missing in result["unavailable"]
    assert not marker.exists()


def test_default_requirements_refuse_where_no_filesystem_layer_holds(user, targets, tmp_path):
    """No Landlock (refused by a seccomp filter) and no namespaces, as the unprivileged user: nothing
    confines the filesystem, so the default SandboxLimits refuse; require=() runs it anyway."""
    python = _unprivileged_python()
    if python is None:
        pytest.skip("no Python interpreter that an unprivileged user can execute")
    marker = targets["drop"] / f"ran-{uuid.uuid4().hex}"
    jobs = [{"sources": [f"open({str(marker)!r}, 'w').write('ran')"], "limits": {**LIMITS, "skip": ["audit-hook"]}},
            {"sources": ["print('ok')"], "limits": {**LIMITS, "require": []}}]  # fmt: skip
    argv = [python, str(RUNNER), "--deny", "unshare,landlock"]
    if ROOT:
        argv = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *argv]
    done = subprocess.run(argv, input=json.dumps(jobs), capture_output=True, text=True, check=True, timeout=120)
    refused, (ran,) = json.loads(done.stdout)
    assert "filesystem" in refused["unavailable"]
    assert not marker.exists()
    assert ran["passed"] and "landlock" not in ran["layers"] and "mountns" not in ran["layers"]


@pytest.mark.parametrize("env", ENVS)
def test_resource_hogs_still_held(env, user, targets):
    hogs = ["while True:\n    pass", "import os\nwhile True:\n    os.fork()",
            "import threading\nthreading.Thread(target=lambda: None).start()",
            "x = []\nwhile True:\n    x.append(' ' * 10**7)", "while True:\n    print('x' * 1000)",
            "import time\ntime.sleep(1000)"]  # fmt: skip
    limits = {"timeout_s": 3.0, "cpu_s": 2, "memory_mb": 256, "output_bytes": 4096, "max_workers": 3}
    start = time.monotonic()
    (batch,) = run_in(env, user, [{"sources": hogs, "limits": limits}], targets["home"])
    assert time.monotonic() - start < 60  # generous: it must come back at all on a busy machine
    assert [r["passed"] for r in batch] == [False] * len(hogs)
    assert batch[-1]["timed_out"]
    assert "MemoryError" in batch[3]["output"]
    assert all(len(r["output"]) <= limits["output_bytes"] for r in batch)
    for r in batch:
        with pytest.raises(ProcessLookupError):
            os.killpg(r["pid"], 0)
    assert not _processes_of(batch)


def _outside_targets() -> tuple[dict[str, str], list[str]]:
    """World-readable files outside every hidden place, with their hashes, and directories to list."""
    import pytest as installed  # a file of the interpreter's third-party packages

    files = [Path(__file__).resolve(), Path(__file__).resolve().parent.parent / "pyproject.toml",
             Path(installed.__file__).resolve(), Path("/etc/passwd")]  # fmt: skip
    hashes = {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}
    dirs = [str(Path(__file__).resolve().parent.parent), str(Path(installed.__file__).resolve().parent.parent), "/etc"]
    return hashes, dirs


@pytest.mark.parametrize(("env", "layers"), [("root", ("mountns", "pidns", "uid")),
                                             ("unprivileged", ("mountns", "userns", "pidns"))],
                         ids=["root", "unprivileged"])  # fmt: skip
def test_mount_layer_alone_shows_nothing_outside_the_interpreter(env, layers, user, targets):
    """Where Landlock is missing the mount layer must close the filesystem by itself: the project
    checkout, the installed packages and /etc are neither readable nor listable."""
    hashes, dirs = _outside_targets()
    program = _fill(OUTSIDE, {"@PATHS@": repr(sorted(hashes)), "@DIRS@": repr(dirs)})
    result = _single(program, env, user, targets, **_only(*layers))
    assert "mountns" in result["layers"], result["layers"]
    for digest in hashes.values():
        assert digest not in result["output"], result["output"]
    assert not [line for line in result["output"].splitlines() if line.startswith("CONTENT")], result["output"]
    assert "DID" not in result["output"], result["output"]


def test_mount_layer_alone_keeps_the_standard_library_usable(user, targets):
    """The minimal root still holds what programs use after the lockdown: modules not preloaded
    (pure Python and native, with their shared libraries), /dev/null, os.urandom."""
    program = PRELUDE + (
        "import sqlite3, xml.dom.minidom, zlib, csv\n"
        "print(sqlite3.connect(':memory:').execute('select 6*7').fetchone()[0], zlib.crc32(b'x'),\n"
        "      len(os.urandom(8)), open('/dev/null', 'w').write('x'), xml.dom.minidom.parseString('<a/>').documentElement.tagName)\n"
    )  # fmt: skip
    result = _single(program, "root", user, targets, **_only("mountns", "pidns", "uid"))
    assert "42 2363233923 8 1 a" in result["output"], result["output"]


def _ipc_objects() -> dict[str, set[str]]:
    """The host's SysV IPC objects by kind (ids): a program's objects that outlive it show up here."""
    found = {}
    for kind in ("shm", "sem", "msg"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        found[kind] = {line.split()[1] for line in lines}
    return found


@pytest.mark.parametrize("env", ENVS)
def test_no_ipc_object_outlives_the_program(env, user, targets):
    """SysV shared memory, semaphores, message queues and POSIX message queues are refused (or die
    with the program's IPC namespace): none is left on the host."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mq = f"peft_svf_mq_{uuid.uuid4().hex[:12]}"
    before = _ipc_objects()
    try:
        result = _single(_fill(IPC, {"@MQ@": mq}), env, user, targets)
        left = {kind: ids - before[kind] for kind, ids in _ipc_objects().items()}
        assert left == {"shm": set(), "sem": set(), "msg": set()}, result["output"]
        assert libc.mq_open(f"/{mq}".encode(), 0) < 0, result["output"]  # O_RDONLY: exists?
    finally:
        for kind, flag in (("shm", "-m"), ("sem", "-s"), ("msg", "-q")):
            for ident in _ipc_objects()[kind] - before[kind]:
                subprocess.run(["ipcrm", flag, ident], check=False)
        libc.mq_unlink(f"/{mq}".encode())


def _scheduling(pid: int) -> tuple:
    import ctypes

    ioprio = ctypes.CDLL(None, use_errno=True).syscall(252, 1, pid)  # ioprio_get(IOPRIO_WHO_PROCESS, pid)
    return os.getpriority(os.PRIO_PROCESS, pid), os.sched_getaffinity(pid), os.sched_getscheduler(pid), ioprio


def _priority_check(env: str, user_name: str, targets: dict, **limits) -> dict:
    victim = _victim(env, user_name)
    try:
        time.sleep(0.2)
        before, mine = _scheduling(victim.pid), _scheduling(os.getpid())
        result = _single(_fill(PRIORITY, {"@VICTIM@": str(victim.pid)}), env, user_name, targets, **limits)
        assert _scheduling(victim.pid) == before, result["output"]
        assert _scheduling(os.getpid()) == mine, result["output"]
        assert "OWN 5 [0]" in result["output"], result["output"]
        return result
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.skipif(sandbox_syscalls.MACHINE != "x86_64", reason="the attack uses x86_64 syscall numbers")
@pytest.mark.parametrize("env", ENVS)
def test_no_priority_change_reaches_other_processes(env, user, targets):
    result = _priority_check(env, user, targets)
    assert "DID" not in result["output"], result["output"]


@pytest.mark.skipif(sandbox_syscalls.MACHINE != "x86_64", reason="the attack uses x86_64 syscall numbers")
@pytest.mark.parametrize("layers", [("userns", "pidns"), ("seccomp",)], ids="+".join)
def test_priority_single_layer_holds(layers, user, targets):
    """The PID namespace or seccomp alone keep a program of the trainer's uid from renicing it."""
    _priority_check("unprivileged", user, targets, **_only(*layers))
