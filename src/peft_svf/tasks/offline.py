"""An offline task suite for the embedded SmolLM2-135M-Instruct, mirroring the paper's structure.

The paper trains math/code/reasoning experts on GSM8K, MBPP and ARC-Easy and tests self-adaptation
on MATH, HumanEval and ARC-Challenge. A 135M model scores ~0 on all of those, and RL needs tasks
where sampling sometimes succeeds; so these procedurally generated analogues were chosen by
measuring the embedded model (``benchmarks/measure_offline_tasks.py``; numbers in docs/tasks.md):

============  ======================  =================================================================
domain        training task           held-out "unseen" task (different distribution, never trained on)
============  ======================  =================================================================
math          ``offline_math``        ``offline_math_unseen``: bare LaTeX products and differences
              word problems,          (often negative), answer asked in ``\\boxed{}``
              one-step +/-
code          ``offline_code``        ``offline_code_unseen``: complete a function from its docstring
              two-step integer        (HumanEval-style), string/list function families
              function from a
              description + test
reasoning     ``offline_reasoning``   ``offline_reasoning_unseen``: which of four things belongs to a
              largest or smallest of  category (A-D)
              3 numbers, answered
              with the number
============  ======================  =================================================================

``offline_reasoning_letters`` (largest of three as options A-C) was the first reasoning task; it is kept
for reference only: the embedded model answers "A)" to every item, and no SVF expert learned it (docs/tasks.md).

Items are generated from a seeded ``random.Random`` per (stream, split): the same seed always gives
the same items. The training pool is split as the authors did (even indices train, odd validate);
the test split is drawn from an independent stream and excludes questions seen in the pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from datasets import Dataset

from .registry import Task, chat_prompt, register_task
from .rewards import (
    assert_tests,
    check_function_tests,
    choice_reward,
    code_reward,
    numeric_reward,
)

POOL_SIZE = 2000  # train + valid (1000 each, even/odd)
TEST_SIZE = 500
DEFAULT_SEED = 0
Item = dict[str, Any]
Generator = Callable[[random.Random], Item]

_NAMES = ["Sam", "Mia", "Leo", "Ava", "Tom", "Zoe", "Ben", "Lily", "Max", "Emma", "Noah", "Ella", "Omar", "Ines",
          "Ravi", "Yuki", "Hugo", "Nina", "Kofi", "Sara"]
_THINGS = ["apples", "books", "coins", "marbles", "stickers", "pencils", "cookies", "cards", "shells", "stamps"]
_LETTERS = "ABCD"


def _math_word(rng: random.Random) -> Item:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(3, 20), rng.randint(1, 9)
    if rng.random() < 0.5:
        text = f"{name} has {a} {thing}. {name} gets {b} more {thing}. How many {thing} does {name} have now?"
        answer = a + b
    else:
        a = max(a, b + 1)
        text = f"{name} has {a} {thing}. {name} gives away {b} {thing}. How many {thing} does {name} have left?"
        answer = a - b
    return {"question": text, "user": f"{text} Answer with just the number.", "answer": str(answer)}


def _math_boxed(rng: random.Random) -> Item:
    if rng.random() < 0.5:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        text, answer = f"Compute ${a} \\times {b}$.", a * b
    else:  # often negative: a case GSM8K-style training never shows
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        text, answer = f"Compute ${a} - {b}$.", a - b
    return {"question": text, "user": f"{text} Put your final answer in \\boxed{{}}.", "answer": str(answer)}


# (description, body) of two-step integer functions; one-step ones were too easy (92.5% greedy).
_TWO_STEP: list[tuple[str, str]] = [
    ("returns x multiplied by {k}, plus {j}", "x * {k} + {j}"),
    ("returns x plus {k}, multiplied by {j}", "(x + {k}) * {j}"),
    ("returns x squared minus {k}", "x * x - {k}"),
    ("returns the remainder of x divided by {k}, plus {j}", "x % {k} + {j}"),
    ("returns x minus {k} if x is even, otherwise x plus {j}", "x - {k} if x % 2 == 0 else x + {j}"),
    ("returns the larger of x and {k}, times {j}", "max(x, {k}) * {j}"),
]
_FUNC_NAMES = ["f", "g", "h", "compute", "transform", "calc", "apply", "step", "value", "score", "solve", "convert"]


def _code_write(rng: random.Random) -> Item:
    desc, body = rng.choice(_TWO_STEP)
    k, j = rng.randint(2, 12), rng.randint(2, 12)
    name = rng.choice(_FUNC_NAMES)
    expr = body.format(k=k, j=j)
    tests = [f"assert {name}({x}) == {eval(expr, {'x': x})!r}" for x in [0, 3, 7, -2]]  # our own expression
    text = f"Write a Python function `{name}(x)` that {desc.format(k=k, j=j)}."
    user = f"{text} Your code should pass this test:\n{tests[1]}\nAnswer with just the code."
    return {"question": text, "user": user, "test_list": tests, "test_setup_code": "",
            "code": f"def {name}(x):\n    return {expr}\n"}  # fmt: skip


# (name, docstring, body, input kind, fixed test inputs) of string/list functions: HumanEval-style families.
_DOC_FUNCS: list[tuple[str, str, str, str, list[Any]]] = [
    ("reverse_text", "Return the string s reversed.", "s[::-1]", "str", ["abc", "hello", "", "ab"]),
    ("shout", "Return s in upper case.", "s.upper()", "str", ["abc", "Hi there", "", "x1"]),
    ("count_a", "Return how many times the letter 'a' occurs in s.", "s.count('a')", "str", ["banana", "", "xyz"]),
    ("first_char", "Return the first character of the non-empty string s.", "s[0]", "str", ["abc", "z", "hello"]),
    ("double_text", "Return s repeated twice.", "s * 2", "str", ["ab", "", "xyz"]),
    ("first_item", "Return the first element of the non-empty list s.", "s[0]", "list", [[3, 1], [7], [0, 5]]),
    ("last_item", "Return the last element of the non-empty list s.", "s[-1]", "list", [[3, 1], [7], [0, 5]]),
    ("total", "Return the sum of the numbers in the list s.", "sum(s)", "list", [[1, 2, 3], [], [5], [-1, 1]]),
    ("biggest", "Return the largest number in the non-empty list s.", "max(s)", "list", [[1, 5, 3], [7], [-2, -9]]),
    ("smallest", "Return the smallest number in the non-empty list s.", "min(s)", "list", [[1, 5, 3], [7], [-2, -9]]),
    ("size", "Return the number of elements in the list s.", "len(s)", "list", [[1, 2, 3], [], [0, 0]]),
    ("sort_list", "Return the numbers in the list s sorted from smallest to largest.", "sorted(s)", "list",
     [[3, 1, 2], [], [5, 5, 1]]),
]  # fmt: skip


def _random_input(rng: random.Random, kind: str) -> Any:
    if kind == "str":
        return "".join(rng.choice("abcdehlnorstxyz") for _ in range(rng.randint(1, 7)))
    return [rng.randint(-9, 20) for _ in range(rng.randint(1, 5))]


def _code_complete(rng: random.Random) -> Item:
    name, doc, body, kind, fixed = rng.choice(_DOC_FUNCS)
    shown = _random_input(rng, kind)
    inputs = [shown, *fixed]
    example = eval(body, {"s": shown})  # our own expression on our own input
    stub = f'def {name}(s):\n    """{doc}\n    >>> {name}({shown!r})\n    {example!r}\n    """\n'
    checks = "\n".join(f"    assert candidate({x!r}) == {eval(body, {'s': x})!r}" for x in inputs)
    test = f"def check(candidate):\n{checks}\n"
    user = f"Complete the following Python function. Answer with just the code.\n```python\n{stub}```"
    return {"question": stub, "user": user, "stub": stub, "test": test, "entry_point": name,
            "canonical_solution": f"    return {body}\n"}  # fmt: skip


def _mc(rng: random.Random, options: list[str], correct: str, question: str) -> Item:
    rng.shuffle(options)
    labels = list(_LETTERS[: len(options)])
    listing = " ".join(f"{label}) {opt}" for label, opt in zip(labels, options, strict=True))
    text = f"{question} {listing}"
    return {"question": text, "user": f"{text}\nAnswer with the letter.", "answer": labels[options.index(correct)],
            "choice_labels": labels}  # fmt: skip


def _reasoning_extreme(rng: random.Random) -> Item:
    values = rng.sample(range(10, 100), 3)
    word, pick = rng.choice([("largest", max), ("smallest", min)])
    text = f"Which number is the {word}: {values[0]}, {values[1]} or {values[2]}?"
    return {"question": text, "user": f"{text} Answer with just the number.", "answer": str(pick(values))}


def _reasoning_largest(rng: random.Random) -> Item:
    values = rng.sample(range(10, 100), 3)
    return _mc(rng, [str(v) for v in values], str(max(values)), "Which number is the largest?")


_CATEGORIES = {
    "an animal": ["dog", "cat", "horse", "rabbit", "lion", "sheep", "mouse", "tiger", "duck", "frog"],
    "a fruit": ["apple", "banana", "orange", "grape", "pear", "cherry", "lemon", "mango", "peach", "plum"],
    "a colour": ["red", "blue", "green", "yellow", "purple", "white", "black", "pink", "brown", "grey"],
    "a tool": ["hammer", "saw", "wrench", "drill", "shovel", "screwdriver", "rake", "axe", "chisel", "pliers"],
    "a vehicle": ["car", "bus", "truck", "bicycle", "train", "boat", "plane", "tractor", "scooter", "taxi"],
    "a piece of furniture": ["chair", "table", "sofa", "bed", "desk", "shelf", "stool", "bench", "cupboard",
                             "wardrobe"],
}  # fmt: skip


def _reasoning_category(rng: random.Random) -> Item:
    target, *others = rng.sample(sorted(_CATEGORIES), 4)
    correct = rng.choice(_CATEGORIES[target])
    distractors = [rng.choice(_CATEGORIES[c]) for c in others[:3]]
    return _mc(rng, [correct, *distractors], correct, f"Which of these is {target}?")


def _build(generator: Generator, stream: str, split: str, seed: int, exclude_pool: bool) -> list[Item]:
    pool_rng = random.Random(f"{stream}:pool:{seed}")
    pool = [generator(pool_rng) for _ in range(POOL_SIZE)]
    if split in ("train", "valid"):
        return pool[0 if split == "train" else 1 :: 2]
    # Training tasks test on unseen questions; unseen tasks are never trained on, so only repeats are dropped.
    seen = {item["question"] for item in pool} if exclude_pool else set()
    test_rng = random.Random(f"{stream}:test:{seed}")
    items: list[Item] = []
    for _ in range(TEST_SIZE * 50):  # spaces are large; the cap only guards against a tiny one
        item = generator(test_rng)
        if item["question"] not in seen:
            seen.add(item["question"])
            items.append(item)
            if len(items) == TEST_SIZE:
                break
    return items


def offline_loader(generator: Generator, stream: str, exclude_pool: bool = True) -> Callable[..., Dataset]:
    """A task loader over a seeded item generator.

    ``stream`` names the random streams (with the seed): it fixes the items, so it must not change
    once results are published. ``exclude_pool``: test questions avoid the train/valid pool.
    """

    def load(split: str, seed: int = DEFAULT_SEED) -> Dataset:
        """Generate the split (deterministic for a given seed)."""
        rows = []
        for item in _build(generator, stream, split, seed, exclude_pool):
            row = {k: v for k, v in item.items() if k != "user"}
            rows.append({"prompt": chat_prompt(item["user"]), **row})
        return Dataset.from_list(rows)

    return load


# name: (domain, generator, stream, reward, max_new_tokens, description). Streams are the names the items
# were measured under (benchmarks/measure_offline_tasks.py); keep them, or the published numbers no longer apply.
OFFLINE_TASKS: dict[str, tuple[str, Generator, str, Any, int, str]] = {
    "offline_math": ("math", _math_word, "_math_word", numeric_reward(position="result", name="offline_math_reward"),
                     32, "one-step +/- word problems, 'answer with just the number' (GSM8K analogue)"),
    "offline_code": ("code", _code_write, "_code_write_two_step",
                     code_reward(assert_tests, name="offline_code_reward"), 48,
                     "two-step integer function from a description and a test, run in the sandbox (MBPP analogue)"),
    "offline_reasoning": ("reasoning", _reasoning_extreme, "_reasoning_extreme",
                          numeric_reward(position="first", name="offline_reasoning_reward",
                                         explicit=False), 12,
                          "largest or smallest of three numbers, 'answer with just the number' (ARC-Easy analogue)"),
    "offline_reasoning_letters": ("reasoning", _reasoning_largest, "_reasoning_largest",
                                  choice_reward(name="offline_reasoning_letters_reward"), 32,
                                  "largest of three numbers, options A-C (kept for reference: not learnable here)"),
    "offline_math_unseen": ("math", _math_boxed, "_math_boxed",
                            numeric_reward(position="result", name="offline_math_unseen_reward"), 48,
                            "LaTeX multiplication/subtraction (often negative), asked for \\boxed{} (MATH analogue)"),
    "offline_code_unseen": ("code", _code_complete, "_code_complete",
                            code_reward(check_function_tests, name="offline_code_unseen_reward"), 48,
                            "complete a string/list function from its docstring (HumanEval analogue)"),
    "offline_reasoning_unseen": ("reasoning", _reasoning_category, "_reasoning_category",
                                 choice_reward(name="offline_reasoning_unseen_reward"), 32,
                                 "which of four words belongs to a category, options A-D (ARC-Challenge analogue)"),
}  # fmt: skip

OFFLINE_TRAIN_TASKS = ("offline_math", "offline_code", "offline_reasoning")
OFFLINE_UNSEEN_TASKS = ("offline_math_unseen", "offline_code_unseen", "offline_reasoning_unseen")

for _name, (_domain, _gen, _stream, _reward, _tokens, _desc) in OFFLINE_TASKS.items():
    register_task(Task(name=_name, domain=_domain, loader=offline_loader(_gen, _stream, _name not in OFFLINE_UNSEEN_TASKS),
                       reward=_reward, description=_desc,
                       max_new_tokens=_tokens,
                       tags=("offline", "unseen" if _name in OFFLINE_UNSEEN_TASKS else "train")))  # fmt: skip
