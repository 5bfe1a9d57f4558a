"""Tiny models and tokenizers shared by the trainer tests (no Hub access needed)."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from peft_svf.trainer import SVFTrainer, SVFTrainingConfig

EOS = "<eos>"
CHARS = string.ascii_lowercase + string.digits + " ?+=.,:"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer whose EOS is also its pad token, like the embedded SmolLM2."""
    vocab = {EOS: 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=EOS, unk_token="<unk>", padding_side="left"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}.{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    return tokenizer


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """2-layer Llama with initializer_range=0.2, so that rescaling its layers moves the output distribution."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def adapter_config(kind: str) -> PeftConfig:
    """The adapter under test: SVF (the project's method) or LoRA (the comparison) on every projection."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if kind == "lora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    from peft_svf import SVFConfig

    return SVFConfig(target_modules=targets, svd_cache=False)


def save_tiny_model(path: Path) -> Path:
    """A tiny Llama and its character tokenizer (with a chat template), saved like a Hub model."""
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_random_experts(model_dir: Path, root: Path, names: tuple[str, ...] = ("math", "code")) -> dict[str, Path]:
    """SVF experts of the saved tiny model, made different by their random initial vectors (seeds 0, 1...)."""
    from transformers import AutoModelForCausalLM

    config = adapter_config("svf")
    config.init_noise_std = 0.5
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(root / name)
    return {name: root / name for name in names}


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable (adapter) parameters."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# Learning rates that learn the toy reward in a few dozen steps at batch 16 (the paper's 2e-3 is for batch 256).
LEARNING_RATES = {"svf": 0.3, "lora": 0.05}


def prompts(n: int, seed: int = 0, prefix: str = "") -> list[str]:
    """Random 6-letter prompts after ``prefix``, all the same length so that batches never need padding."""
    rng = random.Random(seed)
    return [prefix + "".join(rng.choice("abcdefgh") for _ in range(6)) for _ in range(n)]


def starts_with(completions: list[Any], target: list[str] | None = None, **kwargs: Any) -> list[float]:
    """+1 when the completion starts with the row's ``target`` column (default "e"), else -1."""
    targets = target or ["e"] * len(completions)
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if text.startswith(t) else -1.0 for text, t in zip(texts, targets, strict=True)]


def make_trainer(
    output_dir: str,
    kind: str = "svf",
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
    reward_funcs: Any = starts_with,
    model: Any = None,
    **overrides: Any,
) -> SVFTrainer:
    """SVFTrainer on a fresh tiny Llama with small-batch settings; ``overrides`` go to SVFTrainingConfig."""
    tokenizer = tiny_tokenizer()
    settings: dict[str, Any] = {
        "output_dir": output_dir,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "gradient_accumulation_steps": 1,
        "learning_rate": LEARNING_RATES[kind],
        "max_steps": 30,
        "max_completion_length": 4,
        "beta": 0.0,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    settings.update(overrides)
    return SVFTrainer(
        model if model is not None else tiny_llama(len(tokenizer)),
        reward_funcs,
        args=SVFTrainingConfig(**settings),
        train_dataset=train_dataset
        if train_dataset is not None
        else Dataset.from_dict({"prompt": prompts(64)}),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=None if isinstance(model, PeftModel) else adapter_config(kind),
    )


def run_cli(argv: list, capsys: Any) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one ``peft-svf`` call, whether it returned or exited through argparse."""
    from peft_svf.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
