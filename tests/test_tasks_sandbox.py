"""The sandbox's ordinary behaviour and its building blocks; hostile programs are in test_tasks_sandbox_attacks.py."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from peft_svf.tasks import sandbox, sandbox_syscalls
from peft_svf.tasks.sandbox import LAYERS, SandboxLimits, run_program, run_programs

LIMITS = SandboxLimits(timeout_s=5.0, cpu_s=2, memory_mb=256, output_bytes=4096)


def test_clean_program_passes_and_can_use_its_own_directory(monkeypatch):
    made = []
    real_mkdtemp = sandbox.tempfile.mkdtemp
    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    result = run_program("import math\nopen('x.txt', 'w').write('hi')\nprint(open('x.txt').read(), math.sqrt(16))", LIMITS)
    assert result.passed, result.output
    assert result.output.strip() == "hi 4.0"
    # this program's own folder is removed (other sandboxes, e.g. of a parallel run, may come and go in /tmp)
    assert len(made) == 1 and not os.path.exists(made[0])
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)


def test_failing_assert_and_syntax_error_fail():
    result = run_program("def f(x):\n    return x\nassert f(1) == 2", LIMITS)
    assert not result.passed and "AssertionError" in result.output
    result = run_program("def f(:\n", LIMITS)
    assert not result.passed and "SyntaxError" in result.output


def test_skipping_the_tests_by_exiting_early_fails():
    """Also through the child's own frames (the set-up keeps no real exit reachable there). A hostile
    program can still forge status 0 (see SandboxResult): this guards honest programs and easy forgeries."""
    frame_exit = "import sys\nf = sys._getframe(1)\n[v for v in f.f_locals.values() if callable(v)][0](0)\nassert 1 == 2"
    for program in ("import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)\nassert False",
                    'import sys\nsys._getframe(1).f_locals["real_exit"](0)\nassert 1 == 2', frame_exit):
        result = run_program(program, LIMITS)
        assert not result.passed and result.returncode != 0, result


def test_output_flooding_is_capped():
    result = run_program("while True:\n    print('x' * 1000)", LIMITS)
    assert not result.passed
    assert 0 < len(result.output) <= LIMITS.output_bytes


def test_the_program_sees_no_source_file_and_only_itself():
    """The source arrives on stdin, not as a file the program could read; with a PID namespace the
    program is pid 1 and /proc lists nothing else."""
    result = run_program("import os\nprint(sorted(os.listdir('.')), os.getpid())", LIMITS)
    assert result.passed, result.output
    listing, pid = result.output.split("] ")
    assert listing == "["
    if "pidns" in result.layers:
        assert pid.strip() == "1"


def _expected_layers() -> set[str]:
    """What this machine provides, probed independently of the sandbox (util-linux's unshare, the
    Landlock ABI syscall)."""
    expected = {"rlimits", "audit-hook"}
    if sandbox_syscalls.SYSCALLS is not None:
        expected.add("seccomp")
    abi = sandbox_syscalls.landlock_abi()
    expected |= {"landlock"} if abi else set()
    expected |= {"landlock-net"} if abi >= 4 else set()
    expected |= {"landlock-scope"} if abi >= 6 else set()
    root = os.geteuid() == 0
    flags = ["--pid", "--fork", "--net", "--mount", "--ipc", "--uts"] + ([] if root else ["--user"])
    if shutil.which("unshare") and subprocess.run(["unshare", *flags, "true"], check=False).returncode == 0:
        expected |= {"pidns", "netns", "mountns", "ipcns"} | (set() if root else {"userns"})
    expected |= {"uid"} if root else set()
    return expected


def test_reported_layers_match_what_the_machine_provides():
    result = run_program("print('ok')", SandboxLimits(require=()))
    assert result.passed, result.output
    assert set(result.layers) == _expected_layers()
    assert result.network == ("netns" if "netns" in result.layers else "seccomp")
    assert (result.uid >= 0) == (os.geteuid() == 0)


def test_skipped_layers_are_not_reported_and_unknown_names_are_refused():
    result = run_program("print('ok')", SandboxLimits(require=(), skip=("seccomp", "landlock", "netns")))
    assert result.passed
    assert not {"seccomp", "landlock", "landlock-net", "landlock-scope", "netns"} & set(result.layers)
    with pytest.raises(ValueError, match="unknown sandbox layers"):
        SandboxLimits(require=("firewall",))
    with pytest.raises(ValueError):
        SandboxLimits(skip=("network",))  # an aspect is not a layer one can switch off
    assert set(sandbox.ASPECTS) == {"network", "filesystem", "signals", "processes"}
    assert all(layer in LAYERS for alts in sandbox.ASPECTS.values() for alt in alts for layer in alt)


def test_network_namespace_has_only_a_loopback():
    result = run_program("print(open('/proc/net/dev').read())", SandboxLimits(require=(), skip=("landlock",)))
    if "netns" not in result.layers:
        pytest.skip("no network namespace on this machine (unshare refused)")
    interfaces = [line.split(":")[0].strip() for line in result.output.splitlines()[2:] if ":" in line]
    assert interfaces == ["lo"]


def test_run_programs_keeps_order_and_bounds_workers(monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()
    real = sandbox.run_program

    def counting(source, limits=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real(source, limits)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(sandbox, "run_program", counting)
    programs = [f"assert {i} % 2 == 0" for i in range(6)]
    results = run_programs(programs, SandboxLimits(max_workers=2))
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(6)]
    assert 1 <= peak[0] <= 2
    if os.geteuid() == 0:
        assert len({r.uid for r in results}) == len(results) or peak[0] == 1  # distinct uids while concurrent


SECCOMP_PROBE = textwrap.dedent("""
    import ctypes, errno, fcntl, os, sys
    sys.path.insert(0, sys.argv[1])
    nice = os.getpriority(0, 0)  # set again: the kernel allows it, only the filter can refuse
    import sandbox_syscalls as sc
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    rules = {"kill": ("allow_if", 0, [os.getpid()]), "prlimit64": ("allow_if", 0, [0, os.getpid()]),
             "ioctl": ("deny_if", 1, [0x5412]), "unshare": ("deny_if_any_bit", 0, sc.CLONE_NEWNET),
             "socket": None, "fcntl": ("deny_if", 1, [8, 10]),
             "setpriority": [("allow_if", 0, [0]), ("allow_if", 1, [0])]}
    sc.install_seccomp(sc.seccomp_filter(rules, errno=errno.EACCES))
    def outcome(fn):
        try:
            fn()
            return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    libc = ctypes.CDLL(None, use_errno=True)
    def ioctl(request):
        if libc.ioctl(0, request, ctypes.byref(ctypes.c_int(0))) < 0 and ctypes.get_errno() == errno.EACCES:
            raise OSError(errno.EACCES, "ioctl")
    print(outcome(lambda: os.kill(os.getpid(), 0)), outcome(lambda: os.kill(os.getppid(), 0)),
          outcome(lambda: os.kill(-1, 0)), outcome(lambda: sc.unshare(0)), outcome(lambda: sc.unshare(sc.CLONE_NEWNET)),
          outcome(lambda: ioctl(0x5412)), outcome(lambda: ioctl(0x5413)),
          outcome(lambda: __import__("resource").getrlimit(7)), outcome(lambda: __import__("socket").socket()),
          outcome(lambda: fcntl.fcntl(0, fcntl.F_GETFL)), outcome(lambda: fcntl.fcntl(0, 8, os.getpid())),
          outcome(lambda: fcntl.fcntl(0, 10, 0)), outcome(lambda: os.setpriority(0, 0, nice)),
          outcome(lambda: os.setpriority(0, os.getpid(), nice)), outcome(lambda: os.setpriority(1, 0, nice)))
""")  # fmt: skip


def test_seccomp_filter_compiles_each_kind_of_rule():
    """Each rule kind in a real filter (with a distinctive errno): signals only to itself, an ioctl
    request refused while another passes, a flag bit refused while no flags pass, a syscall refused,
    fcntl commands refused while another passes, and a list of checks (setpriority only for
    PRIO_PROCESS 0) refusing when either check fails."""
    done = subprocess.run([sys.executable, "-I", "-c", SECCOMP_PROBE, os.path.dirname(sandbox_syscalls.__file__)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.split() == ["ok", "EACCES", "EACCES", "ok", "EACCES", "EACCES", "ok", "ok", "EACCES",
                                   "ok", "EACCES", "EACCES", "ok", "EACCES", "EACCES"]


def test_landlock_confines_reads_and_writes_to_the_granted_paths(tmp_path):
    if not sandbox_syscalls.landlock_abi():
        pytest.skip("Landlock is not available on this kernel")
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("readable")
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "f").write_text("secret")
    probe = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(sandbox_syscalls.__file__)!r})
        import sandbox_syscalls as sc
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        sc.landlock_restrict([{str(tmp_path / 'rw')!r}], [{str(tmp_path / 'ro' / 'f')!r}], [], sc.landlock_abi())
        def outcome(fn):
            try:
                fn()
                return "ok"
            except OSError as e:
                return type(e).__name__
        d = {str(tmp_path)!r}
        print(outcome(lambda: open(d + "/rw/new", "w").write("x")), outcome(lambda: open(d + "/ro/f").read()),
              outcome(lambda: open(d + "/ro/f", "a")), outcome(lambda: open(d + "/no/f").read()),
              outcome(lambda: os.listdir(d + "/ro")), outcome(lambda: os.remove(d + "/no/f")))
    """)
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["ok", "ok"] + ["PermissionError"] * 4
    assert (tmp_path / "no" / "f").read_text() == "secret"


@pytest.mark.parametrize(("table", "header"), [("_X86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
                                               ("_AARCH64", "/usr/include/asm-generic/unistd.h")])  # fmt: skip
def test_syscall_numbers_agree_with_the_kernel_headers(table, header):
    """The hand-written tables against the installed kernel headers (syscalls newer than the headers
    are not checkable there: they are listed in the assertion)."""
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed (Debian: linux-libc-dev)")
    text = Path(header).read_text()
    numbers = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text)}
    ours = getattr(sandbox_syscalls, table)
    assert {k: v for k, v in ours.items() if k in numbers and numbers[k] != v} == {}
    assert {k for k in ours if k not in numbers} <= {"fchmodat2", "setxattrat", "removexattrat"}


def test_work_directory_is_a_private_size_limited_tmpfs_where_the_mount_layer_holds():
    """Many files, each under the file-size limit, must not fill the machine's disk."""
    program = textwrap.dedent("""
        total = 0
        try:
            for i in range(200):  # 12 MB: well over the 1 MiB limit, harmless without it
                with open(f"f{i}", "wb") as f:
                    f.write(b"x" * 60000)
                total += 60000
        except OSError as e:
            print("stopped", total, e.errno)
        import os
        print(os.statvfs(".").f_blocks * os.statvfs(".").f_frsize)
    """)
    result = run_program(program, SandboxLimits(disk_mb=1, output_bytes=65536, require=()))
    if "mountns" not in result.layers:
        pytest.skip("no mount namespace here: the work directory is a plain directory")
    stopped, size = result.output.splitlines()
    _, total, err = stopped.split()
    assert int(err) == 28  # ENOSPC
    assert int(total) <= 1024 * 1024 and int(size) == 1024 * 1024
