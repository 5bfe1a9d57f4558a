"""peft-svf: Transformer-Squared (Sun, Cetin, Tang, ICLR 2025) as a PEFT plugin.

Importing the package registers the "SVF" PEFT method, after which PEFT's own entry points
(``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM``...) handle SVF adapters.

Every export loads on first use, so that ``import peft_svf`` (and with it ``peft-svf --help``) costs no
torch import. The registration itself needs PEFT, so it happens when PEFT is there: at once if ``peft`` is
already imported, else the moment it is (a one-shot import hook), which is before any PEFT entry point can
be called. ``peft_svf.svf`` registers on import as well, so ``from peft_svf import SVFConfig`` does too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SVF_PEFT_TYPE": "peft_svf.svf",
    "SVFConfig": "peft_svf.svf",
    "SVFModel": "peft_svf.svf",
    "convert_official": "peft_svf.svf",
    "count_svf_parameters": "peft_svf.svf",
    "SVFTrainer": "peft_svf.trainer",
    "SVFTrainingConfig": "peft_svf.trainer",
    "tasks": "peft_svf.tasks",
    "Task": "peft_svf.tasks",
    "get_task": "peft_svf.tasks",
    "list_tasks": "peft_svf.tasks",
    "register_task": "peft_svf.tasks",
    "evaluate": "peft_svf.tasks",
    "EvalResult": "peft_svf.tasks",
    "checked_reward_call": "peft_svf.tasks",
    "RewardError": "peft_svf.tasks",
    "SelfAdaptiveModel": "peft_svf.adaptive",
    "mix_svf_adapters": "peft_svf.adaptive",
    "train_classification_expert": "peft_svf.adaptive",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'peft_svf' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if name == "tasks" else getattr(module, name)


def _register_svf() -> None:
    # While peft_svf.svf is itself being imported (it imports peft), it registers when it finishes.
    if "peft_svf.svf" not in sys.modules:
        importlib.import_module("peft_svf.svf")


class _RegisterSVFWhenPeftLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asks the other finders for ``peft``'s spec and makes its loader run the
    registration right after ``peft/__init__.py`` has executed; then removes itself."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "peft":
            return None
        others = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for f in others if (s := f.find_spec(fullname, path, target)) is not None), None)
        if spec is None:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # every importlib loader since Python 3.10 has exec_module; nothing to wrap otherwise
        loader, execute = spec.loader, spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            if module.__name__ != "peft":  # a loader shared with other modules: only peft's import counts
                return
            del loader.exec_module  # back to the loader's own method
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_svf()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "peft" in sys.modules:
    _register_svf()
elif not any(isinstance(finder, _RegisterSVFWhenPeftLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterSVFWhenPeftLoads())
