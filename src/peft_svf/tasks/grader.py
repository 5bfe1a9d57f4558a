"""A code grader whose verdict the graded program cannot forge (EvalPlus-style).

A reward that runs ``model code + asserts`` and checks the exit status can be gamed: exit 0 before
the asserts, return an object whose ``__eq__`` is always True, patch ``assert``/builtins, print fake
success. Here the tests never enter the sandbox. Each row's tests are parsed in the trainer's process
into *probes* (a function name and plain-data arguments) and *cases* (a check over probe results that
holds the expected values). The sandboxed program is the model's code plus a harness
(:mod:`peft_svf.tasks._grader_harness`) that calls the function on each probe's arguments and prints the
results as tagged JSON of plain types. The trainer decodes them (no user class can cross), and judges
every case itself; a case whose result is missing, duplicated, malformed or not plain data fails.
Whatever the program prints, it cannot know the expected values without computing them.

Tests are covered in two ways:

- **exact**: each ``assert`` (MBPP's ``test_list``, or the body of HumanEval's ``check(candidate)``)
  becomes one case: the calls to the function under test are the probes, and the rest of the assert
  (``==``, ``abs(r - y) < 1e-6``, ``math.isclose``, ``set(r) == set(y)``, ``not r``, ...) is evaluated
  here by a small evaluator of pure expressions over plain data. Simple assignments of constants
  (``lst = list(range(-99, 100, 2))``) are evaluated the same way.
- **reference** (anything else: random inputs, helpers, statements beyond the evaluator): the row's
  trusted reference solution (``canonical_solution`` / MBPP's ``code``) runs the original tests in a
  separate sandbox run with the function wrapped by a recorder, which logs every call the tests made
  and its result. That run is made once per distinct row and cached. The model's function is called on
  the recorded inputs; it passes if it gives the reference's results (``==``, or the same exception
  type). Otherwise a second trusted run decides: the original tests run with the function replaced by
  a table of the model's results, so a different but valid answer passes exactly when the tests accept
  it. Neither trusted run contains model code; the second sees only its results, as plain data.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import math
import secrets
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _grader_harness
from ._grader_harness import check_hashes, decode, encode
from .sandbox import SandboxLimits, SandboxResult, run_program, run_programs

HARNESS_SOURCE = Path(_grader_harness.__file__).read_text(encoding="utf-8")
# Results of all probes come back on stdout; leave room for them beyond the sandbox's default 64 KiB.
GRADER_LIMITS = SandboxLimits(output_bytes=1 << 20)
# The trusted reference run executes the original tests (some loop over hundreds of inputs).
REFERENCE_LIMITS = SandboxLimits(timeout_s=30.0, cpu_s=30, output_bytes=8 << 20)
_MAX_LINE = 1 << 20
_EVAL_BUDGET = 1_000_000  # evaluator steps per case; results are attacker data, so bound the work on them
_MAX_SIZE = 1_000_000  # elements a sequence built by the evaluator may have
_SIZE_BUDGET = 4 * _MAX_SIZE  # elements per case that builtins and operators may build, copy or scan
_MAX_BITS = 100_000  # bits of an int that ** , << or * may produce
_MAX_ROUND_DIGITS = 400  # |ndigits| of round(): round(1, -n) computes 10**n


class UngradableTests(ValueError):
    """A row's tests can neither be covered exactly nor through a reference solution."""


class _NotExact(Exception):
    """The tests use something the parent-side evaluator does not cover (the reference path takes over)."""


# ---------------------------------------------------------------------------------------------------------
# A small evaluator of pure expressions: the trusted tests' own code, with probe results as attacker data.

def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > _MAX_SIZE:
        raise ValueError("range too long")
    return r


def _bounded_round(number: Any, ndigits: Any = None) -> Any:
    if ndigits is not None and abs(ndigits) > _MAX_ROUND_DIGITS:
        raise ValueError("round() precision too large")
    return round(number) if ndigits is None else round(number, ndigits)


def _bounded_sum(iterable: Any, start: Any = 0) -> Any:
    """``sum``; concatenating sequences (``sum(lists, [])``) copies the partial result at each step."""
    items = list(iterable)
    if not isinstance(start, int | float | complex) and \
            len(items) * (len(start) + sum(len(item) for item in items)) > _SIZE_BUDGET:  # fmt: skip
        raise ValueError("sum of sequences too large")
    return sum(items, start)


def _hashed_set(iterable: Any = ()) -> set:
    return set(check_hashes(list(iterable)))


def _hashed_frozenset(iterable: Any = ()) -> frozenset:
    return frozenset(check_hashes(list(iterable)))


def _hashed_dict(pairs: Any = (), **kwargs: Any) -> dict:
    """``dict``; keys whose hashes collide are refused, as in :func:`~._grader_harness.check_hashes`."""
    items = list(pairs.items()) if isinstance(pairs, dict) else [tuple(pair) for pair in pairs]
    if any(len(item) != 2 for item in items):
        raise ValueError("dict() needs pairs")
    items += kwargs.items()
    check_hashes([key for key, _ in items])
    return dict(items)


_FUNCS: dict[str, Callable[..., Any]] = {
    "abs": abs, "all": all, "any": any, "bool": bool, "chr": chr, "dict": _hashed_dict, "enumerate": enumerate,
    "float": float, "frozenset": _hashed_frozenset, "int": int, "len": len, "list": list, "max": max,
    "min": min, "ord": ord, "range": _bounded_range, "reversed": reversed, "round": _bounded_round,
    "set": _hashed_set, "sorted": sorted, "str": str, "sum": _bounded_sum, "tuple": tuple, "zip": zip,
}  # fmt: skip
# Builtins whose work grows with their arguments' lengths (charged against the size budget).
_SCANNING = {f for name, f in _FUNCS.items() if name not in ("abs", "bool", "chr", "float", "int", "len", "ord", "round")}
_BUILTIN_NAMES = frozenset(vars(builtins))
_MATH: dict[str, Any] = {name: getattr(math, name) for name in (
    "isclose", "fabs", "sqrt", "floor", "ceil", "isnan", "isinf", "isfinite", "log", "exp", "pi", "e", "inf", "nan",
)}  # fmt: skip
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
    ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b, ast.BitXor: lambda a, b: a ^ b,
}  # fmt: skip
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: lambda a: -a, ast.UAdd: lambda a: +a, ast.Not: lambda a: not a, ast.Invert: lambda a: ~a,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip
_SEQUENCES = (str, bytes, list, tuple)


def _binop(op: ast.operator, a: Any, b: Any) -> Any:
    """``a op b``, refusing results too large to build (a probe result may be a huge number or sequence)."""
    if isinstance(op, ast.Mult):
        for seq, n in ((a, b), (b, a)):
            if isinstance(seq, _SEQUENCES) and isinstance(n, int) and len(seq) * n > _MAX_SIZE:
                raise ValueError("sequence too large")
        if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > _MAX_BITS:
            raise ValueError("product too large")
    elif isinstance(op, ast.Pow) and isinstance(a, int) and isinstance(b, int) and abs(a) > 1:
        if b * a.bit_length() > _MAX_BITS:
            raise ValueError("power too large")
    elif isinstance(op, ast.LShift) and isinstance(a, int) and isinstance(b, int) and a.bit_length() + b > _MAX_BITS:
        raise ValueError("shift too large")
    elif isinstance(op, ast.Mod) and not isinstance(a, (int, float)):  # no %-formatting of strings
        raise TypeError("% on a non-number")
    return _BINOPS[type(op)](a, b)


class _Evaluator:
    """Evaluates a validated expression; ``results`` maps probe call nodes to their decoded results.
    ``steps`` count the nodes it evaluates, ``size`` the elements that operators and builtins build, copy or
    scan (one step can be a million of them, in C)."""

    def __init__(self, env: dict[str, Any], results: dict[int, Any] | None = None) -> None:
        self.scopes = [env]
        self.results = results or {}
        self.steps = 0
        self.size = 0

    def _charge(self, *values: Any) -> None:
        self.size += sum(len(v) for v in values if isinstance(v, Sized))
        if self.size > _SIZE_BUDGET:
            raise RuntimeError("size budget exceeded")

    def __call__(self, node: ast.expr) -> Any:
        self.steps += 1
        if self.steps > _EVAL_BUDGET:
            raise RuntimeError("evaluation budget exceeded")
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise _NotExact(f"{type(node).__name__} is not supported")
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        return node.value

    def _items(self, elts: list[ast.expr]) -> list[Any]:
        out: list[Any] = []
        for elt in elts:
            if isinstance(elt, ast.Starred):
                value = self(elt.value)
                self._charge(value)
                out.extend(value)
            else:
                out.append(self(elt))
            if len(out) > _MAX_SIZE:
                raise ValueError("sequence too large")
        return out

    def _Tuple(self, node: ast.Tuple) -> tuple:
        return tuple(self._items(node.elts))

    def _List(self, node: ast.List) -> list:
        return self._items(node.elts)

    def _Set(self, node: ast.Set) -> set:
        return _hashed_set(self._items(node.elts))

    def _Dict(self, node: ast.Dict) -> dict:
        items: list[tuple[Any, Any]] = []
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                mapping = self(value)
                self._charge(mapping)
                items.extend(mapping.items())
            else:
                items.append((self(key), self(value)))
        return _hashed_dict(items)

    def _Name(self, node: ast.Name) -> Any:
        for scope in reversed(self.scopes):
            if node.id in scope:
                return scope[node.id]
        if node.id in _FUNCS:
            return _FUNCS[node.id]
        raise _NotExact(f"name {node.id!r}")

    def _Attribute(self, node: ast.Attribute) -> Any:
        if isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _MATH:
            return _MATH[node.attr]
        raise _NotExact(f"attribute {ast.unparse(node)!r}")

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        return _UNARY[type(node.op)](self(node.operand))

    def _BinOp(self, node: ast.BinOp) -> Any:
        left, right = self(node.left), self(node.right)
        result = _binop(node.op, left, right)
        self._charge(left, right, result)
        return result

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        value: Any = None
        for operand in node.values:
            value = self(operand)
            if bool(value) != isinstance(node.op, ast.And):
                return value
        return value

    def _Compare(self, node: ast.Compare) -> bool:
        left = self(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self(comparator)
            self._charge(left, right)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True

    def _IfExp(self, node: ast.IfExp) -> Any:
        return self(node.body) if self(node.test) else self(node.orelse)

    def _Subscript(self, node: ast.Subscript) -> Any:
        result = self(node.value)[self(node.slice)]
        if isinstance(node.slice, ast.Slice):  # a copy
            self._charge(result)
        return result

    def _Slice(self, node: ast.Slice) -> slice:
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if p is None else self(p) for p in parts))

    def _Call(self, node: ast.Call) -> Any:
        if id(node) in self.results:
            return self.results[id(node)]
        func = self(node.func)
        if func not in _FUNCS.values() and func not in _MATH.values():
            raise _NotExact(f"call of {ast.unparse(node.func)!r}")
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise _NotExact("** arguments")
            kwargs[kw.arg] = self(kw.value)
        args = self._items(node.args)
        if func in _SCANNING:
            self._charge(*args)
        result = func(*args, **kwargs)
        if func in _SCANNING and isinstance(result, Sized):
            if len(result) > _MAX_SIZE:
                raise ValueError("sequence too large")
            self._charge(result)
        return result

    def _comprehension(self, generators: list[ast.comprehension], emit: Callable[[], None]) -> None:
        def loop(i: int) -> None:
            if i == len(generators):
                emit()
                return
            gen = generators[i]
            if gen.is_async:
                raise _NotExact("async comprehension")
            for item in self(gen.iter):
                self.steps += 1
                if self.steps > _EVAL_BUDGET:
                    raise RuntimeError("evaluation budget exceeded")
                self._bind(gen.target, item)
                if all(self(cond) for cond in gen.ifs):
                    loop(i + 1)

        self.scopes.append({})
        try:
            loop(0)
        finally:
            self.scopes.pop()

    def _bind(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.scopes[-1][target.id] = value
        elif isinstance(target, ast.Tuple | ast.List):
            values = list(value)
            if len(values) != len(target.elts):
                raise ValueError("unpacking mismatch")
            for elt, item in zip(target.elts, values, strict=True):
                self._bind(elt, item)
        else:
            raise _NotExact("comprehension target")

    def _ListComp(self, node: ast.ListComp | ast.GeneratorExp | ast.SetComp) -> list:
        out: list[Any] = []
        self._comprehension(node.generators, lambda: out.append(self(node.elt)))
        return out

    _GeneratorExp = _ListComp

    def _SetComp(self, node: ast.SetComp) -> set:
        return _hashed_set(self._ListComp(node))

    def _DictComp(self, node: ast.DictComp) -> dict:
        out: list[tuple[Any, Any]] = []
        self._comprehension(node.generators, lambda: out.append((self(node.key), self(node.value))))
        return _hashed_dict(out)


def _validate(node: ast.expr, env: dict[str, Any], is_probe: Callable[[str], bool], opaque: set[str]) -> None:
    """Refuse (``_NotExact``) an expression the evaluator cannot judge from probe results alone."""
    bound = {t.id for gen in ast.walk(node) if isinstance(gen, ast.comprehension)
             for t in ast.walk(gen.target) if isinstance(t, ast.Name)}  # fmt: skip
    calls = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            name = sub.id
            if name in opaque:
                raise _NotExact(f"name {name!r} comes from the test setup")
            if id(sub) in calls and is_probe(name) and name not in env and name not in bound:
                continue
            if name not in env and name not in bound and name not in _FUNCS and name != "math":
                raise _NotExact(f"name {name!r}")
        elif isinstance(sub, ast.Attribute):
            if not (isinstance(sub.value, ast.Name) and sub.value.id == "math" and sub.attr in _MATH):
                raise _NotExact(f"attribute {ast.unparse(sub)!r}")
        elif isinstance(sub, ast.expr) and not isinstance(sub, ast.Starred) \
                and not hasattr(_Evaluator, f"_{type(sub).__name__}"):  # fmt: skip
            raise _NotExact(f"{type(sub).__name__} expressions")
        elif isinstance(sub, ast.keyword) and sub.arg is None:
            raise _NotExact("** arguments")


# ---------------------------------------------------------------------------------------------------------
# Test suites: probes (what the sandbox calls) and cases (what this process judges).

@dataclass(frozen=True)
class Probe:
    """One call the sandboxed program makes: ``name(*args, **kwargs)``, arguments as encoded plain data."""

    name: str
    args: Any
    kwargs: Any


@dataclass(frozen=True)
class Outcome:
    """What a probe gave: ``kind`` is ``"v"`` (a value), ``"e"`` (raised ``value``, a type name) or
    ``"x"`` (returned something that is not plain data)."""

    kind: str
    value: Any = None


@dataclass(frozen=True)
class AssertCase:
    """One assert of the tests: ``test`` evaluated here with the probe calls replaced by their results."""

    source: str
    test: ast.expr
    env: dict[str, Any]
    probes: dict[int, int]  # id of a probe call node in ``test`` -> probe index

    def passes(self, outcomes: Sequence[Outcome | None]) -> bool:
        results = {}
        for node_id, index in self.probes.items():
            outcome = outcomes[index]
            if outcome is None or outcome.kind != "v":
                return False
            results[node_id] = outcome.value
        try:
            return bool(_Evaluator(self.env, results)(self.test))
        except Exception:  # a result of the wrong shape makes the original assert raise, i.e. fail
            return False


@dataclass(frozen=True)
class ReferenceCase:
    """One call the original tests made on the reference solution, and what the reference gave; it passes
    when the model's function gives the same: the same plain data, types included (``1 == True`` is no
    match where the test says ``is True``), or the same exception (see ``_grader_harness.exception_name``).
    Anything else goes to the trusted replay, which decides with the original test's own semantics."""

    probe: int
    expected: Outcome

    def passes(self, outcomes: Sequence[Outcome | None]) -> bool:
        got = outcomes[self.probe]
        if got is None or got.kind != self.expected.kind or got.kind == "x":
            return False
        if got.kind == "e":
            return got.value == self.expected.value
        return json.dumps(encode(got.value)) == json.dumps(encode(self.expected.value))


@dataclass(frozen=True)
class Reference:
    """The trusted program (reference solution + original tests) behind a reference suite: ``names`` are
    the functions its tests call, ``tests`` the code that runs them."""

    program: str
    names: tuple[str, ...]
    tests: str

    def run(self, call: str, *args: Any, limits: SandboxLimits) -> Any | None:
        """Run ``_grader_harness.<call>(namespace, names, tests, *args, marker)`` on the program; the
        payload of its result line, or None when the tests failed."""
        marker = secrets.token_hex(16)
        result = run_program(_with_harness(self.program, call, list(self.names), self.tests, *args, marker), limits)
        outcomes = parse_outcomes(result.output, marker, 1, raw=True)
        return outcomes[0] if result.passed else None


@dataclass(frozen=True)
class TestSuite:
    """What the trainer knows about one row's tests. ``prefix`` is trusted code placed before the model's
    code (MBPP imports and setup); with ``stub``/``entry`` a bare function body is completed from the stub.
    ``exact``: every assert is its own case; otherwise the cases come from a run of ``reference``."""

    probes: tuple[Probe, ...]
    cases: tuple[AssertCase | ReferenceCase, ...]
    exact: bool
    prefix: str = ""
    stub: str = ""
    entry: str = ""
    reference: Reference | None = None
    notes: tuple[str, ...] = field(default=())

    def source(self, code: str) -> str:
        """The model's code as it runs: after the prefix, or completing the stub."""
        if not self.stub:
            return f"{self.prefix}\n{code}" if self.prefix else code
        return complete_function(code, self.stub, self.entry)

    def program(self, code: str, marker: str) -> str:
        """The sandboxed program: the model's code, then the harness calling the probes (no expected values)."""
        probes = json.dumps([[p.name, p.args, p.kwargs] for p in self.probes])
        return _with_harness(self.source(code), "run_probes", probes, marker)

    def judge(self, outcomes: Sequence[Outcome | None]) -> tuple[bool, ...]:
        """Per case, whether it passed, given the probes' outcomes (see :func:`parse_outcomes`)."""
        return tuple(case.passes(outcomes) for case in self.cases)

    def answers(self, outcomes: Sequence[Outcome]) -> str:
        """The outcomes as :func:`~peft_svf.tasks._grader_harness.replay` reads them."""
        return json.dumps([[p.name, p.args, p.kwargs, [o.kind, encode(o.value) if o.kind == "v" else o.value]]
                           for p, o in zip(self.probes, outcomes, strict=True)])  # fmt: skip


def _with_harness(program: str, call: str, *args: Any) -> str:
    """``program``, then ``_grader_harness.<call>(globals(), *args)``; the harness lives in a namespace of its
    own, so its names cannot clobber the program's (arguments are plain strings and lists, passed as reprs)."""
    arguments = "".join(f", {a!r}" for a in args)
    return (f"{program}\n\n_peft_svf_harness = {{}}\nexec({HARNESS_SOURCE!r}, _peft_svf_harness)\n"
            f"_peft_svf_harness[{call!r}](globals(){arguments})\n")  # fmt: skip


def complete_function(code: str, stub: str, entry: str) -> str:
    """HumanEval-style completion: a model that wrote the whole ``def entry`` gets the stub before it (its
    imports and helper functions; the stub's own ``entry`` is overridden); a bare body completes the stub."""
    if f"def {entry}" in code:
        return f"{stub}\n{code}"
    return stub + code


def parse_outcomes(output: str, marker: str, count: int, raw: bool = False) -> list[Any]:
    """The probe outcomes in ``output``: lines ``MARKER INDEX JSON``. A missing probe is ``None``; a
    duplicated, unknown or malformed result line voids every probe (a program that prints result lines
    of its own is gaming, and only the lines' content could be trusted anyway). ``raw``: the lines' JSON
    payloads as they are (trusted runs)."""
    outcomes: list[Any] = [None] * count
    prefix = f"{marker} "
    for line in output.splitlines():
        if not line.startswith(prefix):
            continue
        index_text, _, payload = line[len(prefix):].partition(" ")
        try:
            index = int(index_text)
            if not 0 <= index < count or outcomes[index] is not None or len(payload) > _MAX_LINE:
                raise ValueError("bad result line")
            if raw:
                outcomes[index] = json.loads(payload)
                continue
            kind, value = json.loads(payload)
            if kind == "v":
                outcomes[index] = Outcome("v", decode(value))
            elif kind in ("e", "x") and type(value) is str:
                outcomes[index] = Outcome(kind, value)
            else:
                raise ValueError("bad result kind")
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
            return [None] * count
    return outcomes


# ---------------------------------------------------------------------------------------------------------
# Building suites from rows.

def _bound_names(source: str) -> set[str]:
    """Names that top-level statements of ``source`` bind (MBPP's setup code)."""
    names: set[str] = set()
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        else:
            names.update(n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


_MAX_UNROLLED = 10_000  # assert statements a suite may unroll from loops


def _exact_cases(statements: list[ast.stmt], is_probe: Callable[[str], bool], opaque: set[str],
                 ) -> tuple[list[Probe], list[AssertCase]]:  # fmt: skip
    """Probes and one case per assert (loops over constants unrolled), or ``_NotExact`` when a statement
    is beyond the evaluator."""
    probes: list[Probe] = []
    cases: list[AssertCase] = []

    def run(body: list[ast.stmt], env: dict[str, Any]) -> dict[str, Any]:
        for stmt in body:
            env = statement(stmt, env)
        return env

    def statement(stmt: ast.stmt, env: dict[str, Any]) -> dict[str, Any]:
        if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            return env
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Name) and stmt.value.id in {"print", *_FUNCS}:
            return env  # a bare name as a statement (HumanEval/129 has "print")
        if isinstance(stmt, ast.Import) and all(a.name == "math" and a.asname is None for a in stmt.names):
            return env
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            return {**env, _target(stmt.targets[0], is_probe): _value(stmt.value, env)}
        if isinstance(stmt, ast.For) and not stmt.orelse and isinstance(stmt.target, ast.Name):
            name = _target(stmt.target, is_probe)
            items = list(_value(stmt.iter, env))
            for item in items:
                if len(cases) > _MAX_UNROLLED:
                    raise _NotExact("loops too long to unroll")
                run(stmt.body, {**env, name: item})
            return env
        if not isinstance(stmt, ast.Assert):
            raise _NotExact(f"{type(stmt).__name__} statement")
        _validate(stmt.test, env, is_probe, opaque)
        calls: dict[int, int] = {}
        for node in ast.walk(stmt.test):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and is_probe(node.func.id) \
                    and node.func.id not in env:  # fmt: skip
                args = _constant(ast.Tuple(elts=node.args, ctx=ast.Load()), env)  # * arguments expand here
                kwargs = {kw.arg: _constant(kw.value, env) for kw in node.keywords if kw.arg is not None}
                if len(kwargs) != len(node.keywords):
                    raise _NotExact("** arguments")
                try:
                    probe = Probe(node.func.id, encode(args), encode(kwargs))
                except (TypeError, ValueError) as exc:
                    raise _NotExact(f"arguments that are not plain data: {exc}") from exc
                calls[id(node)] = len(probes)
                probes.append(probe)
        cases.append(AssertCase(ast.unparse(stmt), stmt.test, env, calls))
        return env

    def _value(node: ast.expr, env: dict[str, Any]) -> Any:
        _validate(node, env, lambda _: False, opaque)
        return _constant(node, env)

    run(statements, {})
    if not cases:
        raise _NotExact("no asserts")
    return probes, cases


def _target(node: ast.Name, is_probe: Callable[[str], bool]) -> str:
    if is_probe(node.id):
        raise _NotExact(f"assignment to {node.id!r}")
    return node.id


def _constant(node: ast.expr, env: dict[str, Any]) -> Any:
    """A probe-free expression's value (arguments, assignments, loop ranges); ``_NotExact`` if it calls the
    function under test or uses a comprehension variable in a probe's arguments."""
    try:
        return _Evaluator(dict(env))(node)
    except _NotExact:
        raise
    except Exception as exc:
        raise _NotExact(f"{ast.unparse(node)!r} does not evaluate: {exc}") from exc


def _reference_suite(reference: Reference, what: str, **fields: Any) -> TestSuite:
    """Cases recorded from the trusted reference solution running the original tests (cached per row)."""
    calls = reference.run("record", limits=REFERENCE_LIMITS)
    if calls is None:
        raise UngradableTests(f"{what}: the reference solution does not pass its own tests")
    probes = tuple(Probe(name, args, kwargs) for name, args, kwargs, _ in calls)
    cases = tuple(ReferenceCase(i, Outcome(kind, decode(value) if kind == "v" else value))
                  for i, (*_, (kind, value)) in enumerate(calls))  # fmt: skip
    if not cases:
        raise UngradableTests(f"{what}: the tests never call {', '.join(reference.names)}")
    return TestSuite(probes, cases, exact=False, reference=reference, **fields)


@functools.lru_cache(maxsize=4096)
def _mbpp_suite(tests: tuple[str, ...], setup: str, reference: str | None) -> TestSuite:
    opaque = _bound_names(setup) - {"math"}
    statements = [stmt for test in tests for stmt in ast.parse(test).body]
    # Probes are calls of the functions the task asks for: those the reference defines (any name, without
    # one), never a builtin. Anything else on an assert's expected side (hex, pow, a helper) would be
    # computed by the program itself, so such an assert is not exact.
    asked = _bound_names(reference) if reference else None
    try:
        probes, cases = _exact_cases(
            statements, lambda name: name not in _BUILTIN_NAMES and (asked is None or name in asked), opaque)
        return TestSuite(tuple(probes), tuple(cases), exact=True, prefix=setup)
    except _NotExact as exc:
        why = str(exc)
    if not reference:
        raise UngradableTests(f"MBPP tests not covered exactly ({why}) and the row has no reference code")
    called = {n.func.id for stmt in statements for n in ast.walk(stmt)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}  # fmt: skip
    names = tuple(sorted(called & _bound_names(reference)))
    return _reference_suite(Reference(f"{setup}\n{reference}", names, "\n".join(tests)), "MBPP row",
                            prefix=setup, notes=(why,))  # fmt: skip


def assert_tests(row: dict[str, Any]) -> TestSuite:
    """MBPP-style row: ``test_list`` (assert statements), optional ``test_imports``/``test_setup_code`` (trusted
    code run before the model's code) and ``code`` (the reference solution, for the fallback)."""
    setup = "\n".join([*(row.get("test_imports") or []), row.get("test_setup_code") or ""]).strip()
    return _mbpp_suite(tuple(row["test_list"]), setup, row.get("code") or None)


@functools.lru_cache(maxsize=4096)
def _check_suite(test: str, stub: str, entry: str, reference: str | None) -> TestSuite:
    module = ast.parse(test)
    checks = [s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"]
    why = "no check(candidate) function"
    if len(checks) == 1 and len(checks[0].args.args) == 1 and not checks[0].decorator_list:
        check = checks[0]
        param = check.args.args[0].arg
        others = [s for s in module.body if s is not check]
        try:
            if any(not isinstance(s, ast.Import | ast.ImportFrom | ast.Assign | ast.Expr) for s in others):
                raise _NotExact("module-level code besides check")
            opaque = _bound_names(ast.unparse(ast.Module(body=others, type_ignores=[]))) - {"math"}
            # The entry point's own name inside check() is the model's function too, as in HumanEval's harness.
            probes, cases = _exact_cases(check.body, lambda name: name in (param, entry), opaque)
            return TestSuite(tuple(Probe(entry, p.args, p.kwargs) for p in probes), tuple(cases), exact=True,
                             stub=stub, entry=entry)  # fmt: skip
        except _NotExact as exc:
            why = str(exc)
    if not reference:
        raise UngradableTests(f"check() not covered exactly ({why}) and the row has no canonical_solution")
    program = f"{complete_function(reference, stub, entry)}\n\n{test}"
    return _reference_suite(Reference(program, (entry,), f"check({entry})"), f"check() of {entry}",
                            stub=stub, entry=entry, notes=(why,))  # fmt: skip


def check_function_tests(row: dict[str, Any]) -> TestSuite:
    """HumanEval-style row: ``stub`` (signature and docstring), ``test`` defining ``check(candidate)``,
    ``entry_point`` and, for the fallback, ``canonical_solution``."""
    return _check_suite(row["test"], row["stub"], row["entry_point"], row.get("canonical_solution") or None)


# ---------------------------------------------------------------------------------------------------------
# Grading.

@dataclass(frozen=True)
class Verdict:
    """One graded program: ``passed`` when every case passed (or, for a reference suite, the original tests
    passed on the program's results); ``cases`` are the per-case results against the expected values and
    ``outcomes`` what the program's result lines said for each probe (None: no valid line)."""

    passed: bool
    cases: tuple[bool, ...]
    outcomes: tuple[Outcome | None, ...]
    result: SandboxResult


def grade(codes: Sequence[str], suites: Sequence[TestSuite], limits: SandboxLimits | None = None) -> list[Verdict]:
    """Grade each model code against its suite: one sandbox run per code, judged in this process.

    A reference suite whose results differ from the reference's gets a second, trusted run: the original
    tests with the function answering from those results (``_grader_harness.replay``), so that a different
    but valid answer (another root of a polynomial, a float off in the 9th digit) passes exactly when the
    original tests would pass it.
    """
    limits = limits or GRADER_LIMITS
    markers = [secrets.token_hex(16) for _ in codes]
    programs = [s.program(c, m) for c, s, m in zip(codes, suites, markers, strict=True)]
    verdicts = []
    for suite, marker, result in zip(suites, markers, run_programs(programs, limits), strict=True):
        outcomes = parse_outcomes(result.output, marker, len(suite.probes))
        cases = suite.judge(outcomes)
        passed = bool(cases) and all(cases)
        if not passed and suite.reference is not None and all(o is not None for o in outcomes):
            passed = suite.reference.run("replay", suite.answers(outcomes), limits=limits) == "passed"
        verdicts.append(Verdict(passed=passed, cases=cases, outcomes=tuple(outcomes), result=result))
    return verdicts
