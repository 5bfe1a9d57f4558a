"""Answer extraction: the reward must read what the model said, in all the ways models say it."""

import random
from fractions import Fraction

import pytest

from peft_svf.tasks.extract import (
    code_block_closed,
    extract_boxed,
    extract_choice,
    extract_code,
    extract_numeric_answer,
    find_numbers,
    first_box_closed,
    first_number_complete,
    math_answers_equal,
    normalize_math_answer,
    parse_number,
)


def test_numbers_with_thousands_separators_signs_and_decimals_round_trip():
    rng = random.Random(0)
    for _ in range(300):
        value = Fraction(rng.randint(-10**7, 10**7), rng.choice([1, 100]))
        text = f"{float(value):,.2f}" if value.denominator != 1 else f"{int(value):,}"
        assert find_numbers(f"So the total is {text} dollars.") == [value]


def test_units_currency_and_unicode_minus():
    assert extract_numeric_answer("The answer is $1,234.50.") == Fraction(123450, 100)
    assert extract_numeric_answer("It costs 18 dollars per week") == 18
    assert extract_numeric_answer("The temperature is −7 °C") == -7
    assert extract_numeric_answer("She walked 3.5km") == Fraction(7, 2)
    assert extract_numeric_answer("50%") == 50


def test_list_of_small_numbers_is_not_one_thousands_number():
    assert find_numbers("1, 2, 3") == [1, 2, 3]
    assert find_numbers("x1 and 2.5.") == [Fraction(5, 2)]  # identifiers are not numbers


def test_explicit_answer_markers_win_over_position():
    text = "First 3 + 4 = 7, then times 2 is 14.\n#### 14\nWait 99"
    assert extract_numeric_answer(text) == 14
    assert extract_numeric_answer("Steps 1 2 3 then \\boxed{42} and 7 more", position="first") == 42
    assert extract_numeric_answer("12 apples, then 30 more", position="first") == 12
    assert extract_numeric_answer("12 apples, then 30 more", position="last") == 30
    assert extract_numeric_answer("no numbers here") is None


def test_boxed_nesting_and_last_box():
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("first \\boxed{1} then \\boxed{\\{-3, 3\\}}") == "\\{-3, 3\\}"
    assert extract_boxed("\\boxed{\\sqrt{\\frac{a}{b}}} done") == "\\sqrt{\\frac{a}{b}}"
    assert extract_boxed("\\fbox{7}") == "7"
    assert extract_boxed("\\boxed{unfinished \\frac{1}{2}") is None
    assert extract_boxed("nothing") is None


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("\\dfrac{1}{3}", "\\frac{1}{3}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("1/2", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        (".5", "0.5"),
        ("x = 4", "4"),
        ("120^\\circ", "120"),
        ("10\\text{ cm}", "10"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("5\\sqrt{2}", "5 \\sqrt{2}"),
        ("1,000", "1000"),
        ("$7$.", "7"),
        ("-\\frac{3}{4}", "-0.75"),
    ],
)
def test_math_equivalent_spellings(pred, ref):
    assert math_answers_equal(pred, ref)
    assert math_answers_equal(ref, pred)


@pytest.mark.parametrize(("pred", "ref"), [("\\frac{1}{3}", "\\frac{1}{2}"), ("5", "-5"), (None, "1"), ("(1,2)", "(2,1)")])
def test_math_different_answers(pred, ref):
    assert not math_answers_equal(pred, ref)


def test_normalisation_is_idempotent():
    for answer in ["\\dfrac{1}{3}", "x = 4", "10\\text{ cm}", "\\left(1,2\\right)", "1/2"]:
        once = normalize_math_answer(answer)
        assert normalize_math_answer(once) == once


def test_parse_number_rejects_non_numbers_and_zero_denominators():
    assert parse_number("abc") is None
    assert parse_number("\\frac{1}{0}") is None
    assert parse_number("3/4") == Fraction(3, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("B) 47", "B"),
        ("The answer is C.", "C"),
        ("Answer: (A)", "A"),
        ("I think option D is right", "D"),
        ("\\boxed{B}", "B"),
        ("a number is larger when... The answer is B", "B"),  # a lower-case article is not option A
        ("The largest number is 83.", None),
    ],
)
def test_choice_extraction(text, expected):
    assert extract_choice(text, ["A", "B", "C", "D"]) == expected


def test_choice_outside_offered_labels_is_ignored():
    assert extract_choice("The answer is D", ["A", "B", "C"]) is None


def test_code_extraction():
    assert extract_code("Sure:\n```python\ndef f(x):\n    return x\n```\nDone") == "def f(x):\n    return x\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("```python\ndef f(x):\n    return x") == "def f(x):\n    return x\n"  # cut off by max tokens
    assert extract_code("def f(x): return x") == "def f(x): return x"


def test_code_extraction_reads_the_first_block_only():
    text = "```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\nraise SystemExit(1)\n```"
    assert extract_code(text) == "def f(x):\n    return x\n"


CODE_TEXTS = [
    "```python\ndef f(x):\n    return x\n```\nThis uses ```python\nprint(1)\n``` too",
    "Here:\n````py\nx = 1\n```\n",
    "```\n```\nempty first block",
    "```javascript\nlet x\n```\n```python\ny = 2\n```",
    "no block, just def f(): pass",
    "```python\nunclosed = True\n",
]


@pytest.mark.parametrize("text", CODE_TEXTS)
def test_code_block_closed_marks_the_point_after_which_the_program_cannot_change(text):
    """Every prefix from the first one where it holds extracts what the whole text extracts; before, it does not
    hold. Checked character by character, as generation would see the text grow."""
    closed_at = next((k for k in range(len(text) + 1) if code_block_closed(text[:k])), None)
    if closed_at is None:
        return
    for k in range(closed_at, len(text) + 1):
        assert code_block_closed(text[:k])
        assert extract_code(text[:k]) == extract_code(text)
    assert text[:closed_at].endswith("```")


def test_code_block_closed_only_for_a_closed_block():
    assert not code_block_closed("```python\ndef f():\n    pass\n")
    assert not code_block_closed("no code at all ``` here")  # a fence without a block opener
    assert code_block_closed("```python\ndef f():\n    pass\n```")
    assert [code_block_closed(t) for t in CODE_TEXTS] == [True, True, True, True, False, False]


NUMBER_TEXTS = [
    "87",
    "The largest is 87.",
    "1,234,567 and then 8",
    "1,23 is not a thousands group",
    "2.5.\n#### 9",
    "-.5, or so",
    "−12 degrees",
    "12,",
    "x1 and y2 then 45 ok",
    "no number at all",
]


@pytest.mark.parametrize("text", NUMBER_TEXTS)
def test_first_number_complete_marks_the_point_after_which_the_first_number_cannot_change(text):
    """From the first prefix where it holds, every longer prefix reads the first number the whole text reads; checked
    character by character, as generation sees the text grow, and on every continuation with more digits, groups
    or decimals."""
    first = [extract_numeric_answer(text[:k], position="first", explicit=False) for k in range(len(text) + 1)]
    done_at = next((k for k in range(len(text) + 1) if first_number_complete(text[:k])), None)
    tails = ("5", "345", ",000", ".25", "0,1", " #### 7")
    if done_at is None:  # then some continuation still changes the first number, or there is none yet
        read = [extract_numeric_answer(text + tail, position="first", explicit=False) for tail in tails]
        assert first[-1] is None or any(r != first[-1] for r in read)
        return
    for k in range(done_at, len(text) + 1):
        assert first_number_complete(text[:k])
        assert first[k] == first[-1]
        for tail in tails:
            assert extract_numeric_answer(text[:k] + tail, position="first", explicit=False) == first[-1]
    assert first[done_at - 1] is not None  # the number was already there one character before


def test_first_number_complete_only_once_something_follows_the_number():
    assert [first_number_complete(t) for t in NUMBER_TEXTS] == [False, False, True, True, True, True, True, False,
                                                                True, False]  # fmt: skip
    assert not first_number_complete("87.")  # "87.5" may follow
    assert first_number_complete("The largest is 87. ")
    assert not first_number_complete("1,234,")  # ",567" may follow
    assert first_number_complete("87\n")


def test_explicit_false_reads_by_position_only():
    text = "12 apples.\n#### 14 and \\boxed{15}"
    assert extract_numeric_answer(text, position="first") == 14
    assert extract_numeric_answer(text, position="first", explicit=False) == 12
    assert extract_numeric_answer("5 + 3 = 8 \\boxed{9}", position="result", explicit=False) == 8


def test_result_policy_reads_a_restated_equation_by_its_result():
    assert extract_numeric_answer("4 + 3 = 7", position="result") == 7
    assert extract_numeric_answer("4 + 3 = 7", position="first") == 4
    assert extract_numeric_answer("Nina has 3 + 5 = 8 cookies. Then 9 = 9", position="result") == 8
    assert extract_numeric_answer("15, since 9 and 6", position="result") == 15
    assert extract_numeric_answer("It is = twelve", position="result") is None


BOX_TEXTS = [
    "Classification: \\boxed{math}",
    "\\boxed{\\text{code}} and later \\boxed{math}",
    "first \\fbox{7} then \\boxed{8}",
    "\\boxed{\\frac{1}{2}} done",
    "\\boxed math, then {x}",
    "\\boxed math",
    "\\boxed{unclosed \\frac{1}{2}",
    "no box at all",
]


@pytest.mark.parametrize("text", BOX_TEXTS)
def test_first_box_closed_marks_the_point_after_which_the_first_box_cannot_change(text):
    """From the first prefix where it holds, every longer prefix, and every continuation of it, reads the first box
    the whole text reads; checked character by character, as generation sees the text grow."""
    done_at = next((k for k in range(len(text) + 1) if first_box_closed(text[:k])), None)
    if done_at is None:
        return
    whole = extract_boxed(text, first=True)
    for k in range(done_at, len(text) + 1):
        assert first_box_closed(text[:k])
        assert extract_boxed(text[:k], first=True) == whole
        for tail in ("}", "{x}", " \\boxed{other}", "ics"):
            assert extract_boxed(text[:k] + tail, first=True) == whole
    assert text[:done_at].endswith("}")


def test_the_first_box_against_the_last():
    assert [extract_boxed(t, first=True) for t in BOX_TEXTS] == [
        "math", "\\text{code}", "7", "\\frac{1}{2}", "x", "math", None, None]  # fmt: skip
    assert [extract_boxed(t) for t in BOX_TEXTS[:3]] == ["math", "math", "8"]
    assert [first_box_closed(t) for t in BOX_TEXTS] == [True, True, True, True, True, False, False, False]
