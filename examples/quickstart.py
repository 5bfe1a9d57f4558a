"""Quickstart: attach SVF to the embedded SmolLM2-135M-Instruct, check the identity, train one step, save, reload.

python examples/quickstart.py [--output-dir outputs/quickstart]
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import PeftModel, get_peft_model

from peft_svf import SVFConfig
from peft_svf.embedded import load_embedded_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/quickstart")
    args = parser.parse_args()

    model, tokenizer = load_embedded_model()
    messages = [{"role": "user", "content": "What is 12 + 7? Answer with just the number."}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        base_logits = model(**prompt).logits
        base_answer = model.generate(**prompt, max_new_tokens=12, do_sample=False)

    start = time.perf_counter()
    peft_model = get_peft_model(model, SVFConfig(task_type="CAUSAL_LM"))  # SVD of 210 weights, cached on disk
    print(f"attached SVF in {time.perf_counter() - start:.1f} s")
    peft_model.print_trainable_parameters()

    with torch.no_grad():
        svf_logits = peft_model(**prompt).logits
        svf_answer = peft_model.generate(**prompt, max_new_tokens=12, do_sample=False)
    print(
        f"identity adapter: max |logits - base logits| = {(svf_logits - base_logits).abs().max().item():.2e}"
    )
    print(f"same greedy answer as the base: {torch.equal(svf_answer, base_answer)}")
    print(
        "answer:", tokenizer.decode(svf_answer[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    )

    # One optimiser step of next-token prediction on a target answer, just to show only z moves.
    target = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "19"}], return_tensors="pt", return_dict=True
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    loss = peft_model(**target, labels=target["input_ids"]).loss
    loss.backward()
    optimizer.step()
    print(
        f"next-token loss before the step: {loss.item():.3f}; "
        f"after: {peft_model(**target, labels=target['input_ids']).loss.item():.3f}"
    )

    peft_model.save_pretrained(args.output_dir)
    reloaded = PeftModel.from_pretrained(load_embedded_model()[0], args.output_dir)
    with torch.no_grad():
        same = torch.equal(reloaded(**prompt).logits, peft_model(**prompt).logits)
    print(f"saved to {args.output_dir}; reloaded adapter gives identical logits: {same}")


if __name__ == "__main__":
    main()
