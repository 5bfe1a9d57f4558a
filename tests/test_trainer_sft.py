"""The same SVF adapter also trains with next-token prediction (paper Table 4, row 4) through TRL's SFTTrainer.

With ``peft_config=SVFConfig(...)`` the TRL user keeps their trainer: the loss falls, every vector moves, and
the saved adapter reloads with ``PeftModel.from_pretrained`` bit for bit (vectors and outputs).
"""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from test_trl_trainers import assert_trained_and_reloads
from trainer_fixtures import adapter_config, adapter_state, prompts, tiny_llama, tiny_tokenizer


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
            use_cpu=True,
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
    before = adapter_state(trainer.model)
    trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert_trained_and_reloads(trainer, before, tokenizer, tmp_path / "adapter")
