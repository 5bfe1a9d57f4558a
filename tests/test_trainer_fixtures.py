"""Tiny models and tokenizers shared by the trainer tests (no Hub access needed)."""

from __future__ import annotations

import string

import torch
from peft import LoraConfig, PeftConfig
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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

    return SVFConfig(target_modules=targets)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable (adapter) parameters."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
