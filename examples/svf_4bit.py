"""SVF on a bitsandbytes 4-bit (NF4) base: identity, one training step, save and reload.

As LoRA does in QLoRA, the base stays quantised and only the adapter trains: SVF decomposes each
dequantised weight once, a fresh adapter reproduces the 4-bit model exactly (its change is added to the
quantised layer's own output), only the singular-value vectors get gradients, and the saved adapter
reloads onto a freshly quantised copy of the same base.

Needs bitsandbytes (`pip install "peft-svf[bnb]"`). The model is loaded with transformers'
`BitsAndBytesConfig`, on the GPU when there is one (compute in bf16), else on the CPU (float32):

    python examples/svf_4bit.py --model meta-llama/Meta-Llama-3-8B-Instruct   # GPU + Hub, about 6 GB
    python examples/svf_4bit.py                  # the embedded SmolLM2-135M-Instruct, CPU or GPU
    python examples/svf_4bit.py --quick          # a tiny random Llama on the CPU, a few seconds
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from peft_svf import SVFConfig


def load_4bit(path: str | Path, device: str) -> PreTrainedModel:
    """The model with every decoder linear in NF4 (the output head stays in full precision)."""
    import bitsandbytes as bnb

    compute_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=compute_dtype, device_map=device
    )
    if device == "cpu":
        # bitsandbytes (0.50) repacks a 4-bit weight for its AVX512-BF16 CPU kernel on the first forward in
        # eval mode without gradients. The repacked layer has no backward (gradients stop there) and PEFT's
        # dequantisation misreads it, so the SVD would be of a wrong matrix. Keep the portable layout.
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model.eval()


def save_tiny_llama(directory: Path) -> Path:
    """A random Llama saved like a Hub checkpoint. bitsandbytes' CPU kernels want input widths that are
    multiples of its block size (64), hence hidden 64 and MLP 128."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def quantized_weights_digest(model: torch.nn.Module) -> str:
    """Hash of every 4-bit weight, to show that training leaves the quantised base untouched."""
    import bitsandbytes as bnb

    digest = hashlib.sha256()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            digest.update(module.weight.data.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Hub id or folder; default: the embedded SmolLM2")
    parser.add_argument("--quick", action="store_true", help="tiny random Llama on the CPU")
    parser.add_argument("--output-dir", default="outputs/svf_4bit")
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()

    import bitsandbytes as bnb  # the optional extra: imported here so --help works without it

    device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    scratch = tempfile.TemporaryDirectory()
    if args.quick:
        path = save_tiny_llama(Path(scratch.name) / "tiny-llama")
        batch = {"input_ids": torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))}
    else:
        if args.model is None:
            from peft_svf.embedded import embedded_model_path

            path = embedded_model_path()
        else:
            path = args.model
        tokenizer = AutoTokenizer.from_pretrained(path)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"}],
            tokenize=False,
        )
        batch = dict(tokenizer(text, return_tensors="pt", add_special_tokens=False))
    batch = {k: v.to(device) for k, v in batch.items()}

    base = load_4bit(path, device)
    quantized = sum(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    print(f"loaded {path} in 4-bit on {device}: {quantized} Linear4bit layers, "
          f"{base.get_memory_footprint() / 2**20:.1f} MiB")  # fmt: skip
    with torch.no_grad():
        base_logits = base(**batch).logits
    base_digest = quantized_weights_digest(base)

    model = get_peft_model(base, SVFConfig(task_type="CAUSAL_LM"))
    model.print_trainable_parameters()
    with torch.no_grad():
        identity_error = (model(**batch).logits - base_logits).abs().max().item()
    print(f"identity error (max |logits - 4-bit base logits|): {identity_error:.3e}")

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    model.eval()
    with torch.no_grad():
        trained_logits = model(**batch).logits
        after = model(**batch, labels=batch["input_ids"]).loss.item()
    print(f"training step: loss {loss.item():.4f} -> {after:.4f}; "
          f"{len(with_grad)} tensors got gradients, all SVF vectors: {all('svf_vector' in n for n in with_grad)}")  # fmt: skip
    print(f"quantised base weights unchanged: {quantized_weights_digest(model) == base_digest}")

    model.save_pretrained(args.output_dir)
    files = sorted(p.name for p in Path(args.output_dir).iterdir())
    size = (Path(args.output_dir) / "adapter_model.safetensors").stat().st_size
    print(f"saved {', '.join(files)} to {args.output_dir} (adapter {size / 1024:.1f} KiB)")

    reloaded = PeftModel.from_pretrained(load_4bit(path, device), args.output_dir)
    with torch.no_grad():
        same = torch.equal(reloaded(**batch).logits, trained_logits)
    print(f"reloaded onto a fresh 4-bit base, identical logits: {same}")


if __name__ == "__main__":
    main()
