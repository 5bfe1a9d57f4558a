"""Figure 6's confusion matrix is built once: ``dispatch_confusion`` and the main job's report share its layout."""

from __future__ import annotations

from collections.abc import Sequence

from peft_svf.adaptive import DispatchDecision, dispatch_confusion
from peft_svf.pipeline.report import confusion

# What a dispatcher says for each question: the first word, "None" standing for a fixed mixture's no-label.
QUESTIONS = {
    "math": ["math 1+1", "math 2+2", "code 3+3", "others 4+4"],
    "code": ["code def f", "code def g", "None def h"],
}


class FirstWordDispatcher:
    def dispatch(self, prompts: Sequence[str]) -> list[DispatchDecision]:
        words = [p.split()[0] for p in prompts]
        return [DispatchDecision(None if w == "None" else w, {}) for w in words]


def test_dispatch_confusion_counts_each_true_label_against_each_choice():
    table = dispatch_confusion(FirstWordDispatcher(), QUESTIONS)
    assert table["rows"] == table["labels"] == ["math", "code", "others"]
    # Counted by hand from QUESTIONS: no label (a fixed mixture) counts as "others".
    assert table["matrix"] == [[2, 1, 1], [0, 2, 1], [0, 0, 0]]
    assert table["fractions"] == [[0.5, 0.25, 0.25], [0.0, 2 / 3, 1 / 3], [0.0, 0.0, 0.0]]
    assert table["n"] == 7


def test_the_reports_confusion_has_the_same_layout_per_unseen_task():
    """The report gets label counts per task from the pipeline; given the same choices, the same rows."""
    unseen = {
        "gsm_like": {"prompt dispatch": {"labels": {"math": 2, "code": 1, "others": 1}}},
        "mbpp_like": {"prompt dispatch": {"labels": {"math": 0, "code": 2, "others": 1}}},
    }
    report = confusion(unseen, "prompt dispatch", {"gsm_like": "math", "mbpp_like": "code"})
    direct = dispatch_confusion(FirstWordDispatcher(), QUESTIONS)
    assert report["rows"] == ["math", "code"] and report["tasks"] == ["gsm_like", "mbpp_like"]
    assert report["labels"] == direct["labels"]
    for key in ("matrix", "fractions"):
        assert report[key] == direct[key][:2]
    assert report["n"] == direct["n"]
