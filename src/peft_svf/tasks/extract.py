"""Answer extraction and normalisation: the part of a reward that decides what the model *said*.

Small models wrap answers in prose, units, currency, LaTeX and thousands separators; a reward that
misreads those punishes correct answers and teaches the policy noise. Everything here is pure
string processing so that it can be tested exhaustively without a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction

# A number: optional sign (ASCII or Unicode minus), thousands groups or plain digits, optional decimals.
_NUMBER_RE = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w.])[-−]?\.\d+")


def parse_number(text: str) -> Fraction | None:
    """Exact value of a number written as ``-1,234.50``, ``3/4``, ``\\frac{3}{4}`` or ``50%``; None if not one.

    Exact fractions (not floats) so that ``0.1 + 0.2``-style rounding never decides a reward.
    """
    s = text.strip().replace("−", "-").replace("$", "").replace(",", "").replace(" ", "")
    s = s.removesuffix(".").removesuffix("\\%").removesuffix("%")
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(-?\d+)\}?", s)
    if frac:
        sign, num, den = frac.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign else value
    slash = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
    if slash:
        return None if int(slash.group(2)) == 0 else Fraction(int(slash.group(1)), int(slash.group(2)))
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers(text: str) -> Iterator[tuple[re.Match[str], Fraction]]:
    """Each number of free text with where it stands, in order (a match whose value does not parse is skipped)."""
    for match in _NUMBER_RE.finditer(text):
        value = parse_number(match.group(0))
        if value is not None:
            yield match, value


def find_numbers(text: str) -> list[Fraction]:
    """All numbers in free text, in order, with commas as thousands separators (``1,234`` is one number)."""
    return [value for _, value in _numbers(text)]


def extract_boxed(text: str, *, first: bool = False) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), or with ``first`` of the first one, honouring
    nested braces; None if absent."""
    start = _first_box(text) if first else max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        # "\boxed 5" form
        rest = text[start:].split(None, 1)
        return rest[1].split("$")[0].strip() if len(rest) == 2 else None
    return _braced(text, i)


def _braced(text: str, i: int) -> str | None:
    """What lies between the brace at ``i`` and its matching close; None when it has not closed."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: the model stopped mid-answer


def _first_box(text: str) -> int:
    found = [i for i in (text.find("\\boxed"), text.find("\\fbox")) if i >= 0]
    return min(found, default=-1)


def first_box_closed(text: str) -> bool:
    """Whether the first ``\\boxed{...}`` (or ``\\fbox{...}``) has closed, so that no appended text can change
    ``extract_boxed(text, first=True)`` (a brace-less ``\\boxed 5`` may still grow, so it does not count)."""
    start = _first_box(text)
    brace = text.find("{", start) if start >= 0 else -1
    return brace >= 0 and _braced(text, brace) is not None


def _explicit_answer(text: str) -> Fraction | None:
    """The number after the last ``####``, else the value of the last ``\\boxed{}``; None if neither gives one."""
    if "####" in text:
        numbers = find_numbers(text.split("####")[-1])
        if numbers:
            return numbers[0]
    boxed = extract_boxed(text)
    if boxed is None:
        return None
    value = parse_number(boxed)
    if value is None:
        numbers = find_numbers(boxed)
        value = numbers[-1] if numbers else None
    return value


def first_number_complete(text: str) -> bool:
    """Whether the first number of ``text`` is written out, so that no appended text can change it.

    A number grows while digits, ``,ddd`` groups or ``.dd`` decimals follow it; once a character other than a
    digit, comma or point comes after it, it cannot (the first number is where :func:`find_numbers` starts).
    """
    first = next(_numbers(text), None)
    return first is not None and re.search(r"[^\d,.]", text[first[0].end() :]) is not None


def extract_numeric_answer(text: str, position: str = "last", explicit: bool = True) -> Fraction | None:
    """The model's numeric answer: an explicit ``####`` or ``\\boxed{}`` answer wins, else by ``position``.

    ``"last"`` (the last number) suits chain-of-thought answers (GSM8K). ``"first"`` suits "answer with
    just the number" prompts where a small model states the answer and then rambles on; ``"result"`` is
    ``"first"`` except that a restated equation counts by its result: in "4 + 3 = 7, so..." the answer
    is 7 (the first number after the first "="), not 4. ``explicit=False`` reads by ``position`` alone, so
    that a ``####`` in the rambling after the first number cannot overrule it.
    """
    if explicit:
        stated = _explicit_answer(text)
        if stated is not None:
            return stated
    if position == "result" and "=" in text:
        after = find_numbers(text.split("=", 1)[1])
        if after:
            return after[0]
    numbers = find_numbers(text)
    if not numbers:
        return None
    return numbers[-1] if position == "last" else numbers[0]


def _strip_text_commands(s: str) -> str:
    # \text{ cm} / \mbox{...}: units and words around a MATH answer; keep the content only when it is all there is.
    inner = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    without = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{[^{}]*\}", "", s)
    return without if without.strip() else inner


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)


def normalize_math_answer(answer: str) -> str:
    """Canonical string form of a MATH answer, so that equivalent spellings compare equal.

    Applied to both the reference and the prediction: removes ``$``, spacing commands,
    ``\\left``/``\\right``, degrees, units in ``\\text{}``, ``x =`` prefixes and trailing dots, and
    unifies ``\\dfrac``/``\\tfrac``/``\\frac`` and ``a/b``.
    """
    s = answer.strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("$", "").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = _strip_text_commands(s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.replace(" ", "").rstrip(".")
    s = _fix_fracs(s)
    s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)
    s = re.sub(r"(?<![\d])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def math_answers_equal(prediction: str | None, reference: str) -> bool:
    """Whether two MATH answers agree after normalisation, or as exact numbers when both are numeric."""
    if prediction is None:
        return False
    a, b = normalize_math_answer(prediction), normalize_math_answer(reference)
    if a == b:
        return True
    x, y = parse_number(a), parse_number(b)
    return x is not None and x == y


def extract_choice(text: str, labels: list[str]) -> str | None:
    """The option label the model chose: ``\\boxed{B}``, "answer is B", "(B)", "B." or a lone "B".

    Only labels offered by the question count; the earliest clear statement wins, since small
    models name an answer and then discuss the other options.
    """
    boxed = extract_boxed(text)
    if boxed is not None and boxed.strip().strip("()").upper() in labels:
        return boxed.strip().strip("()").upper()
    alternatives = "|".join(re.escape(label) for label in labels)
    patterns = [
        rf"(?i:answer)\s*(?:(?i:is)|:)?\s*[:\s]*\(?({alternatives})\b",
        rf"^\s*\(?({alternatives})\)?(?:[.:)\s]|$)",
        rf"\(({alternatives})\)",
        rf"\b(?i:option|choice)\s*\(?({alternatives})\b",
    ]
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.MULTILINE)
        if match:
            return match.group(1)
    return None


# A fenced block: an opening fence (bare or tagged Python), its code, and the closing fence or the end of the text
# (a completion cut off by the token limit).
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(```|$)", flags=re.DOTALL)


def extract_code(text: str) -> str:
    """The Python program in a completion: its first fenced block, or the whole text if there is none.

    Only the first block: a later one is example usage or prose code, and reading no further lets generation
    stop once the block closes (:func:`code_block_closed`).
    """
    block = _CODE_BLOCK.search(text)
    return block.group(1).rstrip() + "\n" if block else text


def code_block_closed(text: str) -> bool:
    """Whether the block :func:`extract_code` reads has closed, so that no further text can change the program.

    The leftmost block and its earliest closing fence stay where they are when text is appended, so once this is
    true it stays true, and ``extract_code`` of any continuation is ``extract_code(text)``.
    """
    block = _CODE_BLOCK.search(text)
    return block is not None and block.group(2) == "```"
