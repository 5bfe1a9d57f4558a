"""What the ``peft-svf`` commands share: the parser, model loading, expert sets, data files and rewards.

Nothing here imports torch, datasets or the tasks at module level: ``peft-svf --help`` and every
``peft-svf <cmd> --help`` load only this package; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from datasets import Dataset

    from ..tasks.rewards import RewardFunc

# Mistakes a user can make (bad file, unknown task or reward, wrong columns, no network for a Hub id): one
# line and exit status 2, as is a reward's RewardError (see user_errors). Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, KeyError, OSError, ImportError)
# The Hub client and the HTTP stacks under it raise their own types for a missing connection or permission.
NETWORK_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3")


def user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus RewardError, which can only have been raised if its module was imported (so that
    reporting a bad file does not import the tasks, torch and datasets just to test an isinstance)."""
    rewards = sys.modules.get("peft_svf.tasks.rewards")
    return (*USER_ERRORS, rewards.RewardError) if rewards is not None else USER_ERRORS


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's or the environment's problem (one line), not a bug (traceback)."""
    return isinstance(exc, user_errors()) or type(exc).__module__.startswith(NETWORK_MODULES)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (``peft-svf train: error: ...``), without the usage."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (KeyError's without the quotes its str() adds); network errors,
    whose messages rarely say what failed, are prefixed with their type."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(str(text).split()) or type(exc).__name__
    return text if isinstance(exc, user_errors()) else f"{type(exc).__name__}: {text}"


def description(doc: str) -> str:
    """A command's ``--help`` description: its module docstring after "``peft-svf cmd``: ", capitalised."""
    text = doc.split(": ", 1)[1]
    return text[0].upper() + text[1:]


def add_model_arguments(parser: argparse.ArgumentParser, device: bool = True) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="Hugging Face model id or folder (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype (default: auto, the checkpoint's own; an 8B model in float32 needs 32 GB)",
    )
    if device:
        parser.add_argument(
            "--device", default="auto", help="torch device (default: cuda if available, else cpu)"
        )


def load_model(name: str | None, device: str | None = None, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) for ``--model``: the embedded model when ``name`` is None, in eval mode."""
    import torch

    from ..embedded import load_model_or_embedded

    model, tokenizer = load_model_or_embedded(name, dtype)
    if device is not None:
        model.to(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    return model.eval(), tokenizer


def expert_spec(value: str) -> tuple[str, str]:
    """``--expert NAME=DIR_OR_HUB_ID`` as (name, location)."""
    name, sep, location = value.partition("=")
    if not sep or not name or not location:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR_OR_HUB_ID, got {value!r}")
    return name, location


def add_expert_arguments(parser: argparse.ArgumentParser, required: bool, dispatch: bool = True) -> None:
    parser.add_argument(
        "--expert", dest="experts", action="append", type=expert_spec, required=required, metavar="NAME=DIR",
        help="an expert adapter (folder or Hub id) under a name; repeat for a set",
    )  # fmt: skip
    if not dispatch:
        return
    parser.add_argument(
        "--dispatcher", choices=["prompt", "soft", "classifier"], default="prompt",
        help="how the first pass picks experts: the paper's prompt-based task classification (default), "
             "a soft mixture, or a trained classification expert (--classifier)",
    )  # fmt: skip
    parser.add_argument(
        "--classifier", default=None, metavar="DIR", help="classification expert for --dispatcher classifier"
    )


def expert_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    experts = dict(pairs)
    if len(experts) != len(pairs):
        raise ValueError(f"expert names must differ: {', '.join(name for name, _ in pairs)}")
    return experts


def self_adaptive_model(
    experts: list[tuple[str, str]],
    model: Any,
    tokenizer: Any,
    dispatcher: str = "prompt",
    classifier: str | None = None,
) -> Any:
    """A ``SelfAdaptiveModel`` over the ``--expert`` pairs (its module loads only when needed)."""
    from ..adaptive import SelfAdaptiveModel

    if dispatcher == "classifier" and classifier is None:
        raise ValueError("--dispatcher classifier needs --classifier DIR")
    return SelfAdaptiveModel.from_pretrained(
        model, experts=expert_dict(experts), dispatcher=dispatcher, tokenizer=tokenizer, classifier=classifier
    )


def as_prompt(text: str, tokenizer: Any, raw: bool = False) -> str | list[dict[str, str]]:
    """A user's text as the model should see it: a chat message when the tokenizer has a chat template."""
    from ..tasks import chat_prompt

    return text if raw or getattr(tokenizer, "chat_template", None) is None else chat_prompt(text)


def read_table(path: str | Path, prompt_column: str = "prompt") -> Dataset:
    """A JSON lines (or JSON list), CSV or Parquet file as a dataset whose prompts are in ``prompt``.

    JSON lines keep their types (a prompt may be a list of chat messages); CSV cells stay strings.
    """
    from datasets import Dataset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        try:  # JSON lines, or one JSON list of objects
            rows = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is neither JSON lines nor a JSON list: {exc}") from None
        if not all(isinstance(row, dict) for row in rows):
            raise ValueError(f"{path}: every row must be a JSON object with a prompt column")
        data = Dataset.from_list(rows)
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            data = Dataset.from_list(list(csv.DictReader(f)))
    elif suffix == ".parquet":
        data = Dataset.from_parquet(str(path))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    if len(data) == 0:
        raise ValueError(f"{path} has no rows")
    if prompt_column not in data.column_names:
        raise ValueError(f"{path} has no {prompt_column!r} column; columns: {', '.join(data.column_names)}")
    if prompt_column != "prompt":
        if "prompt" in data.column_names:
            data = data.remove_columns("prompt")
        data = data.rename_column(prompt_column, "prompt")
    return data


def chat_prompts(data: Dataset, tokenizer: Any, raw: bool = False) -> Dataset:
    """Turn a dataset's string prompts into chat messages (see :func:`as_prompt`); chat prompts stay."""
    if raw or not isinstance(data[0]["prompt"], str):
        return data
    return data.map(lambda row: {"prompt": as_prompt(row["prompt"], tokenizer)})


def exact_reward(answer_column: str = "answer", name: str = "exact_reward") -> RewardFunc:
    """+1 when the stripped completion equals the stripped reference, for short free-form answers."""
    from ..tasks import completion_text

    def reward(completions: list, **columns: Any) -> list[float]:
        return [
            1.0 if completion_text(c).strip() == str(ref).strip() else -1.0
            for c, ref in zip(completions, columns[answer_column], strict=True)
        ]

    reward.__name__ = reward.__qualname__ = name
    return reward


def _rewards() -> ModuleType:
    """``peft_svf.tasks.rewards``, imported when a reward is made rather than when --help lists them."""
    from ..tasks import rewards

    return rewards


# name: (factory, dataset columns the reward reads, what it checks)
REWARDS: dict[str, tuple[Callable[[], RewardFunc], tuple[str, ...], str]] = {
    "numeric": (lambda: _rewards().numeric_reward(), ("answer",),
                "the final number (#### n, \\boxed{n}, else the last number)"),
    "numeric_first": (lambda: _rewards().numeric_reward(position="first", name="numeric_first_reward"),
                      ("answer",), "the first number stated (#### n or \\boxed{n} win)"),
    "numeric_result": (lambda: _rewards().numeric_reward(position="result", name="numeric_result_reward"),
                       ("answer",), "the first result, reading a restated '3 + 5 = 8' as 8"),
    "math": (lambda: _rewards().math_reward(), ("answer",), "the last \\boxed{} answer, MATH-normalised"),
    "choice": (lambda: _rewards().choice_reward(), ("answer", "choice_labels"), "the option letter chosen"),
    "code": (lambda: _rewards().code_reward(_rewards().assert_tests), ("test_list",),
             "the code passes the row's assert statements (MBPP style), judged outside the sandbox"),
    "code_check": (lambda: _rewards().code_reward(_rewards().check_function_tests),
                   ("stub", "test", "entry_point"),
                   "the completed function passes check(candidate) (HumanEval style), judged outside the sandbox"),
    "exact": (exact_reward, ("answer",), "the whole completion equals the answer"),
}  # fmt: skip


def rewards_help() -> str:
    return "; ".join(
        f"{name}: {info} (columns: {', '.join(cols)})" for name, (_, cols, info) in REWARDS.items()
    )


def make_reward(name: str, *datasets: Dataset | None) -> RewardFunc:
    """The built-in reward ``name``, after checking every dataset has the columns it reads."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; built-in rewards: {', '.join(REWARDS)}")
    factory, columns, _ = REWARDS[name]
    for data in (d for d in datasets if d is not None):
        missing = [c for c in columns if c not in data.column_names]
        if missing:
            raise ValueError(
                f"reward {name!r} reads the column(s) {', '.join(missing)}, missing from a data file with "
                f"columns {', '.join(data.column_names)}"
            )
    return factory()


def print_json(value: Any) -> None:
    """Machine-readable output: tensors and numpy values become lists and numbers."""

    def default(obj: Any) -> Any:
        return obj.tolist() if hasattr(obj, "tolist") else str(obj)

    print(json.dumps(value, indent=2, default=default))
