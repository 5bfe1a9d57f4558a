"""The grader's code that runs inside the sandbox, and the value codec it shares with the trainer.

:mod:`peft_svf.tasks.grader` embeds this file's text in every graded program (the sandbox cannot import
peft-svf) and imports it for :func:`encode`/:func:`decode`. It needs only builtins, ``json`` and ``sys``,
which the sandbox child imports before it locks anything down.

Values cross the process boundary as JSON with tagged containers, built from the *stored* contents of
plain types only (``int.__int__``, ``list.__iter__``, ...): no user class, ``__eq__`` or ``__repr__``
reaches the trainer, and whatever a program prints, the trainer only ever sees plain data.
"""

import builtins
import json
import sys

MAX_DEPTH = 100
# Comparisons of unequal keys with equal hashes that building one set or dict may cost (see check_hashes).
MAX_COLLISION_WORK = 1000
_TAGS = {"L": list, "T": tuple, "S": set, "F": frozenset}


def encode(value, depth=0):
    """A JSON-able form of plain data (None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
    frozenset; subclasses read through their base type); anything else raises TypeError."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    kind = type(value)
    depth += 1
    if issubclass(kind, int):
        return int.__int__(value)
    if issubclass(kind, float):
        return float.__float__(value)
    if issubclass(kind, str):
        return str.__str__(value)
    if issubclass(kind, complex):
        return {"C": list(complex.__getnewargs__(value))}
    if issubclass(kind, bytes | bytearray):  # bytearray == bytes, as in the original asserts
        return {"B": bytes(value).decode("latin-1")}
    if issubclass(kind, list):
        return {"L": [encode(item, depth) for item in list.__iter__(value)]}
    if issubclass(kind, tuple):
        return {"T": [encode(item, depth) for item in tuple.__iter__(value)]}
    if issubclass(kind, dict):
        return {"D": [[encode(k, depth), encode(v, depth)] for k, v in dict.items(value)]}
    if issubclass(kind, frozenset):  # sorted: the same set encodes the same way in every process
        return {"F": sorted((encode(item, depth) for item in frozenset.__iter__(value)), key=json.dumps)}
    if issubclass(kind, set):
        return {"S": sorted((encode(item, depth) for item in set.__iter__(value)), key=json.dumps)}
    raise TypeError("not plain data")


def check_hashes(keys):
    """``keys`` (a list) unless building a set or dict of them would compare many unequal keys with equal
    hashes (ValueError): ints ``k * (2**61 - 1)`` all hash to 0, and each new one costs a comparison with
    every earlier one, quadratic work in the trainer on values a program chose. Duplicates cost nothing,
    nor do the few equal hashes of ordinary data (``hash(-1) == hash(-2)``)."""
    groups, seen, work = {}, set(), 0
    for key in keys:
        count = groups.get(hash(key), 0)
        work += max(count - 1, 0)  # the lookup below compares with the others of its hash
        if key not in seen:
            work += count > 0
            groups[hash(key)] = count + 1
            seen.add(key)
        if work > MAX_COLLISION_WORK:
            raise ValueError("keys with colliding hashes")
    return keys


def exception_name(exc):
    """What a probe that raised ``exc`` reports: a builtin exception's name, or the module-qualified name of
    any other class (a class of its own named ``ValueError`` is not the ``ValueError`` a test expects)."""
    kind = type(exc)
    name = kind.__name__
    return name if getattr(builtins, name, None) is kind else f"{kind.__module__}.{kind.__qualname__}"


def decode(data, depth=0):
    """The value :func:`encode` described; raises ValueError/TypeError for anything it cannot have produced."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError("not an encoded value")
    ((tag, items),) = data.items()
    if tag == "B" and type(items) is str:
        return items.encode("latin-1")
    if type(items) is not list:
        raise ValueError("not an encoded value")
    depth += 1
    if tag in ("L", "T"):
        return _TAGS[tag](decode(item, depth) for item in items)
    if tag in _TAGS:
        return _TAGS[tag](check_hashes([decode(item, depth) for item in items]))
    if tag == "D":
        if not all(type(pair) is list and len(pair) == 2 for pair in items):
            raise ValueError("not an encoded dict")
        pairs = [(decode(k, depth), decode(v, depth)) for k, v in items]
        check_hashes([k for k, _ in pairs])
        return dict(pairs)
    if tag == "C" and len(items) == 2 and all(type(x) in (int, float) for x in items):
        return complex(*items)
    raise ValueError("not an encoded value")


def _emit(marker, index, payload):
    sys.stdout.write(f"\n{marker} {index} {json.dumps(payload)}\n")
    sys.stdout.flush()


def run_probes(namespace, probes, marker):
    """Call ``namespace[name](*args, **kwargs)`` for each probe and write one result line per probe:
    ``["v", value]``, ``["e", exception_name(exc)]`` (it raised) or ``["x", ""]`` (not plain data)."""
    for index, (name, args, kwargs) in enumerate(json.loads(probes)):
        try:
            value = namespace[name](*decode(args), **decode(kwargs))
        except BaseException as exc:  # an exit or kill attempt inside the function fails this probe only
            _emit(marker, index, ["e", exception_name(exc)])
            continue
        try:
            payload = ["v", encode(value)]
        except BaseException:
            payload = ["x", ""]
        _emit(marker, index, payload)


def record(namespace, names, test_source, marker):
    """Trusted run only: wrap the reference functions ``names``, run the tests, and write every call the
    tests made (name, arguments as given, outcome) as one line; raise if the tests fail."""
    calls, problems = [], []
    active = [0]

    def wrap(name, func):
        def proxy(*args, **kwargs):
            if active[0]:  # a reference function calling itself: only the tests' own calls count
                return func(*args, **kwargs)
            try:
                entry = [name, encode(args), encode(kwargs)]  # before the call, which may mutate its inputs
            except (TypeError, ValueError) as exc:
                problems.append(f"{name} called with arguments that are not plain data: {exc}")
                raise
            active[0] += 1
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                calls.append([*entry, ["e", exception_name(exc)]])
                raise
            finally:
                active[0] -= 1
            try:
                calls.append([*entry, ["v", encode(result)]])
            except (TypeError, ValueError) as exc:
                problems.append(f"{name} returned a value that is not plain data: {exc}")
            return result

        return proxy

    for name in names:
        namespace[name] = wrap(name, namespace[name])
    exec(test_source, namespace)
    if problems:
        raise TypeError("; ".join(problems))
    _emit(marker, 0, calls)


def replay(namespace, names, test_source, answers, marker):
    """Trusted run only: the tests run with ``names`` answering each call from ``answers`` (a program's
    results for the calls :func:`record` saw; a call not among them raises), and one line is written if
    they pass. No untrusted code runs here: the results are plain data."""
    table = {json.dumps([name, args, kwargs]): outcome for name, args, kwargs, outcome in json.loads(answers)}

    class Unrecorded(BaseException):  # not an Exception: a test's "except Exception" must not swallow it
        pass

    def wrap(name):
        def proxy(*args, **kwargs):
            key = json.dumps([name, encode(args), encode(kwargs)])
            if key not in table:
                raise Unrecorded(f"{name} called on inputs the reference run never saw")
            kind, value = table[key]
            if kind == "v":
                return decode(value)
            error = getattr(builtins, value, None) if kind == "e" else None
            if isinstance(error, type) and issubclass(error, Exception):
                raise error(f"{name} raised {value}")
            raise RuntimeError(f"{name} raised {value or 'or returned something that is not plain data'}")

        return proxy

    for name in names:
        namespace[name] = wrap(name)
    exec(test_source, namespace)
    _emit(marker, 0, "passed")
