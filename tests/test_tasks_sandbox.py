"""The sandbox must contain what an RL policy might write: each hostile program fails, in time, cleanly."""

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from peft_svf.tasks import sandbox
from peft_svf.tasks.sandbox import SandboxLimits, run_program, run_programs

LIMITS = SandboxLimits(timeout_s=3.0, cpu_s=2, memory_mb=256, output_bytes=4096)
SLACK_S = 10.0  # generous: the machine is shared; the point is that the call comes back at all


def _sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("peft_svf_sandbox_")}


def _assert_contained(source: str, limits: SandboxLimits = LIMITS):
    """Run a hostile program; it must fail within its limits and leave no directory or process behind."""
    before = _sandbox_dirs()
    start = time.monotonic()
    result = run_program(source, limits)
    elapsed = time.monotonic() - start
    assert not result.passed, result
    assert elapsed < limits.timeout_s + SLACK_S
    assert _sandbox_dirs() == before
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)  # the whole process group is gone
    return result


def test_clean_program_passes_and_can_use_its_own_directory():
    result = run_program("import math\nopen('x.txt', 'w').write('hi')\nprint(open('x.txt').read(), math.sqrt(16))", LIMITS)
    assert result.passed, result.output
    assert result.output.strip() == "hi 4.0"


def test_failing_assert_fails():
    result = run_program("def f(x):\n    return x\nassert f(1) == 2", LIMITS)
    assert not result.passed
    assert "AssertionError" in result.output


def test_infinite_cpu_loop_hits_the_cpu_limit():
    _assert_contained("while True:\n    pass")


def test_sleeping_forever_hits_the_wall_clock_limit():
    result = _assert_contained("import time\ntime.sleep(1000)", SandboxLimits(timeout_s=1.0, cpu_s=5))
    assert result.timed_out


def test_fork_loop():
    _assert_contained("import os\nwhile True:\n    os.fork()")


def test_subprocess_and_threads_are_refused():
    _assert_contained("import subprocess\nsubprocess.run(['sleep', '100'])")
    _assert_contained("import threading\nthreading.Thread(target=lambda: None).start()")


def test_memory_bomb():
    result = _assert_contained("x = []\nwhile True:\n    x.append(' ' * 10**7)")
    assert "MemoryError" in result.output


def test_socket_open_attempt():
    _assert_contained("import socket\ns = socket.socket()\ns.connect(('10.255.255.1', 80))")


def test_network_namespace_has_no_interfaces_when_available():
    result = run_program("print(open('/proc/net/dev').read())", LIMITS)
    if result.network == "netns":
        interfaces = [line.split(":")[0].strip() for line in result.output.splitlines()[2:] if ":" in line]
        assert interfaces == ["lo"]
    else:  # no namespace on this kernel: sockets are still refused by the audit hook (test above)
        assert result.network == "audit-hook"


def test_write_outside_the_temp_dir_fails_and_creates_nothing():
    target = Path(tempfile.gettempdir()) / f"peft_svf_escape_{uuid.uuid4().hex}.txt"
    _assert_contained(f"open({str(target)!r}, 'w').write('escaped')")
    _assert_contained(f"import os\nos.rename('.', {str(target)!r})")
    assert not target.exists()


def test_delete_outside_the_temp_dir_fails(tmp_path):
    victim = Path(tempfile.gettempdir()) / f"peft_svf_victim_{uuid.uuid4().hex}"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    try:
        _assert_contained(f"import os\nos.remove({str(victim / 'keep.txt')!r})")
        _assert_contained(f"import shutil\nshutil.rmtree({str(victim)!r})")
        assert (victim / "keep.txt").read_text() == "precious"
    finally:
        (victim / "keep.txt").unlink()
        victim.rmdir()


def test_output_flooding_is_capped():
    result = _assert_contained("while True:\n    print('x' * 1000)")
    assert len(result.output) <= LIMITS.output_bytes


def test_skipping_the_tests_by_exiting_early_fails():
    _assert_contained("import sys\nsys.exit(0)\nassert False")
    _assert_contained("import os\nos._exit(0)\nassert False")


def test_native_code_is_refused():
    _assert_contained("import ctypes\nctypes.CDLL(None).fork()")


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
