"""The same SVF adapter also trains with next-token prediction (paper Table 4, row 4) through TRL's SFTTrainer."""

from __future__ import annotations

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from test_trainer_fixtures import adapter_config, adapter_state, prompts, tiny_llama, tiny_tokenizer


def test_svf_adapter_trains_with_next_token_prediction(tmp_path):
    tokenizer = tiny_tokenizer()
    texts = [f"{p}={p[::-1]}." for p in prompts(64)]  # learnable: the answer reverses the prompt
    trainer = SFTTrainer(
        model=tiny_llama(len(tokenizer)),
        args=SFTConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=16,
            max_steps=30,
            learning_rate=0.1,
            lr_scheduler_type="constant",
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
            bf16=False,  # SFTConfig defaults to bf16, which the CPU test machine does not support
            gradient_checkpointing=False,
        ),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=adapter_config("svf"),
    )
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    before = adapter_state(trainer.model)
    trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    after = adapter_state(trainer.model)
    assert before.keys() == after.keys() and all("svf_vector" in n for n in after)
    assert any(not torch.equal(before[n], after[n]) for n in after)
    assert all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if not p.requires_grad)
