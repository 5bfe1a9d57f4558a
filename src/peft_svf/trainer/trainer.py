"""``SVFTrainer``: REINFORCE with a KL penalty to the base model (Transformer² eq. 1), shaped like TRL's GRPOTrainer."""

from __future__ import annotations

import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
    Trainer,
    TrainerCallback,
    set_seed,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints
from trl.data_utils import is_conversational
from trl.trainer.utils import identity, selective_log_softmax

from ..precision import contiguous_head_input, factors_in, frozen_weights_in
from ..prefix import can_share_prefix, positions_from_mask, prefix_cache, prefix_layout, shared_prefix_length
from ..prompts import render
from ..stopping import RowsDone
from ..svf.merging import merged_for_inference
from ..tasks.rewards import RewardFunc, checked_reward_call, reward_name, stop_condition
from ..tokens import ensure_pad_token, eos_token_ids
from .checkpoints import (
    checkpoint_problems,
    numbered_checkpoints,
    publish_checkpoint,
    remove_temp_checkpoints,
    temp_checkpoint_dir,
)
from .config import SVFTrainingConfig
from .objective import aggregate_per_sequence, completion_mask, compute_advantages, token_kl
from .sampling import sample_key, seeded_sampling_processors

_TIMERS = ("rollout_time", "update_time", "kl_time")


def _zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss of 0 whose backward writes a zero gradient into every trainable parameter, as the policy-gradient
    loss does when every advantage is 0, without running the model."""
    return sum((param * 0).sum() for param in model.parameters() if param.requires_grad)


class SVFTrainer(Trainer):
    """Trains the active PEFT adapter of a causal LM with REINFORCE and a KL penalty to its base model.

    Per step it samples completions with the adapter merged into the weights (base-model generation
    speed), scores them with ``reward_funcs``, subtracts a baseline, and minimises
    ``-mean_i[A_i · log π(y_i|x_i)] + beta · KL(π_adapted || π_base)``, where the base distribution
    comes from the same model with the adapter disabled (no second copy in memory). Written against the
    generic PEFT interface, it trains SVF experts and, for comparison, LoRA with the same loop.
    """

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        reward_funcs: RewardFunc | list[RewardFunc],
        args: SVFTrainingConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: PeftConfig | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (
            None,
            None,
        ),
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SVFTrainingConfig(f"{str(name).rstrip('/').split('/')[-1] or 'model'}-SVF")
        # Adapter initialisation draws random numbers (SVF's init noise): seed first, as TRL does.
        set_seed(args.seed)
        if isinstance(model, str):
            model_id = model
            model = AutoModelForCausalLM.from_pretrained(model_id, **(args.model_init_kwargs or {}))
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model_id)
        model = self._prepare_peft_model(model, peft_config)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        model.config.pad_token_id = ensure_pad_token(processing_class)
        model.generation_config.pad_token_id = processing_class.pad_token_id
        # Every EOS the model declares (e.g. an end-of-turn token) ends a completion, not only the tokenizer's.
        eos_ids = eos_token_ids(processing_class, model.generation_config)
        if not eos_ids:
            raise ValueError(
                "SVFTrainer needs an EOS token (tokenizer or generation config) to end completions."
            )
        self.eos_token_ids: list[int] = eos_ids

        self.reward_funcs: list[RewardFunc] = (
            list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
        )
        if not self.reward_funcs:
            raise ValueError("SVFTrainer needs at least one reward function.")
        self.reward_func_names = [reward_name(f) for f in self.reward_funcs]
        self.stop_when = stop_condition(self.reward_funcs) if args.stop_when_rewards_done else None
        weights = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(weights)} entries for {len(self.reward_funcs)} reward functions."
            )
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)

        self._metrics: dict[str, defaultdict[str, list[float]]] = {"train": defaultdict(list)}
        self._timers = dict.fromkeys(_TIMERS, 0.0)
        self._micro_steps = 0

        super().__init__(
            model=model,
            args=args,
            data_collator=identity,  # rows stay dicts: prompts are tokenised at rollout time
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        # The loss is a mean over the micro-batch; let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    @staticmethod
    def _prepare_peft_model(model: PreTrainedModel | PeftModel, peft_config: PeftConfig | None) -> PeftModel:
        """Wrap ``model`` with ``peft_config``, or make only the active adapter of a ``PeftModel`` trainable."""
        if isinstance(model, PeftModel):
            if peft_config is not None:
                raise ValueError(
                    "Got a PeftModel and a peft_config: pass either a base model with peft_config, or a PeftModel "
                    "whose active adapter should be trained."
                )
            active = model.active_adapter
            model.set_adapter(active)  # marks the active adapter trainable, also when loaded for inference
            for name in model.peft_config:
                if name != active:
                    model.set_requires_grad(name, requires_grad=False)
            return model
        if peft_config is None:
            raise ValueError(
                "SVFTrainer trains a PEFT adapter: pass peft_config (for example peft_svf.SVFConfig()) or a PeftModel."
            )
        return get_peft_model(model, peft_config)

    def _set_signature_columns_if_needed(self) -> None:
        # Rollouts read `prompt`; with remove_unused_columns=True only that column is kept.
        if self._signature_columns is None:
            self._signature_columns = ["prompt"]

    # ----------------------------------------------------------------------------------------- rollouts

    @contextmanager
    def _generation_model(self) -> Iterator[PeftModel]:
        """The unwrapped model in eval mode, with the adapter merged for generation unless configured not to.

        Merged by :func:`~peft_svf.svf.merging.merged_for_inference`, which puts the original weight tensors
        back afterwards: PEFT's merge/unmerge round trip rounds ``W``, and with the adapter changing between
        steps the error accumulated (a bf16 layer 2.6% off after 1,000 updates). Weights it cannot merge
        exactly (quantised, tied) generate unmerged. Under mixed precision (``bf16=True``) the frozen weights
        are cast once for the rollout (:func:`~peft_svf.precision.frozen_weights_in`) and it runs in
        accelerate's autocast, like the forward.
        """
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            with ExitStack() as stack:
                if self.args.merge_adapter_for_generation:
                    stack.enter_context(merged_for_inference(model))
                stack.enter_context(frozen_weights_in(model, self._half_dtype()))
                stack.enter_context(self.accelerator.autocast())
                stack.enter_context(contiguous_head_input(model))
                yield model
        finally:
            model.train(was_training)

    def _half_dtype(self) -> torch.dtype | None:
        """The dtype mixed precision computes in (``bf16``/``fp16``); None in full precision."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.accelerator.mixed_precision)

    def _generate(self, rows: list[dict[str, Any]], num_generations: int, sample: bool) -> dict[str, Any]:
        """Complete every prompt ``num_generations`` times: seeded sampling for training, greedy for eval."""
        rows = [row for row in rows for _ in range(num_generations)]
        prompts = [row["prompt"] for row in rows]
        texts = [render(self.processing_class, p) for p in prompts]
        conversational = is_conversational({"prompt": prompts[0]})
        # A chat template already writes its special tokens.
        token_rows = self.processing_class(text=texts, add_special_tokens=not conversational)["input_ids"]
        if self.args.max_prompt_length is not None:
            token_rows = [row[-self.args.max_prompt_length :] for row in token_rows]
        shared = shared_prefix_length(token_rows) if self.args.share_prompt_prefix else 0
        device = self.accelerator.device
        prompt_ids, prompt_mask = prefix_layout(token_rows, shared, self.processing_class.pad_token_id, device)

        generation_config = GenerationConfig(
            max_new_tokens=self.args.max_completion_length,
            do_sample=False,
            pad_token_id=self.processing_class.pad_token_id,
            eos_token_id=self.eos_token_ids,
        )
        processors = None
        if sample:
            seeds = [
                sample_key(self.args.seed, self.state.global_step, text, i % num_generations)
                for i, text in enumerate(texts)
            ]
            processors = seeded_sampling_processors(
                seeds, self.args.temperature, self.args.top_k, self.args.top_p
            )
        width = prompt_ids.size(1)
        stopper = RowsDone(self.processing_class, width, self.stop_when) if self.stop_when is not None else None
        with torch.no_grad(), self._generation_model() as model:
            cache = {"cache": prefix_cache(model, prompt_ids[0, :shared], len(rows))} if shared else {}
            output = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=generation_config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stopper]) if stopper is not None else None,
                **cache,
            )
        completion_ids = output[:, width:]
        mask = completion_mask(completion_ids, self.eos_token_ids)
        if stopper is not None:  # its padding is no sampled token, even where the pad is EOS
            mask = mask * stopper.mask(completion_ids)
        id_lists = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, mask, strict=True)]
        decoded = self.processing_class.batch_decode(id_lists, skip_special_tokens=True)
        completions: list[Any] = (
            [[{"role": "assistant", "content": text}] for text in decoded] if conversational else decoded
        )
        # TRL's convention: every other column arrives as a keyword argument, one value per completion.
        columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
        columns.update(completion_ids=id_lists, trainer_state=self.state)
        rewards = torch.tensor(
            [checked_reward_call(func, completions, prompts, **columns) for func in self.reward_funcs],
            dtype=torch.float32,
            device=device,
        ).T
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "shared_prefix_length": shared,
            "completion_ids": completion_ids,
            "completion_mask": mask,
            "rewards_per_func": rewards,
            "rewards": (rewards * self.reward_weights.to(device)).sum(dim=1),
        }

    def _prepare_inputs(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Turn a batch of dataset rows into a scored, advantage-weighted rollout (the RL 'batch')."""
        start = time.perf_counter()
        rollout = self._generate(inputs, self.args.num_generations, sample=True)
        # The baseline spans the global micro-batch, so N processes see the same advantages as one.
        rewards = self.accelerator.gather(rollout["rewards"])
        clipped = (
            rewards
            if self.args.reward_clip is None
            else rewards.clamp(-self.args.reward_clip, self.args.reward_clip)
        )
        advantages = compute_advantages(
            clipped, self.args.num_generations, self.args.advantage_baseline, self.args.scale_rewards
        )
        local = rollout["rewards"].numel()
        offset = self.accelerator.process_index * local
        metrics = self._metrics["train"]
        metrics["reward"].append(rewards.mean().item())
        metrics["reward_std"].append(rewards.std().item() if rewards.numel() > 1 else 0.0)
        metrics["accuracy"].append((rewards > 0).float().mean().item())
        per_func = self.accelerator.gather(rollout["rewards_per_func"]).mean(dim=0)
        for name, value in zip(self.reward_func_names, per_func.tolist(), strict=True):
            metrics[f"rewards/{name}/mean"].append(value)
        lengths = self.accelerator.gather(rollout["completion_mask"].sum(dim=1)).float()
        metrics["completions/mean_length"].append(lengths.mean().item())
        self._timers["rollout_time"] += time.perf_counter() - start
        return {
            "prompt_ids": rollout["prompt_ids"],
            "prompt_mask": rollout["prompt_mask"],
            "shared_prefix_length": rollout["shared_prefix_length"],
            "completion_ids": rollout["completion_ids"],
            "completion_mask": rollout["completion_mask"],
            "advantages": advantages[offset : offset + local],
        }

    # ----------------------------------------------------------------------------------------- loss

    def _completion_logits(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Temperature-scaled float logits at every completion position, shape (batch, completion, vocab).

        Positions are those the rollout's ``generate`` used (counted over real tokens), and a prompt prefix
        shared by every row runs once, its KV cache repeated for the rows (gradients flow through it).
        """
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        position_ids = positions_from_mask(attention_mask)
        # As TRL does: the LM head runs only where a completion token is predicted, not over the prompt.
        keep = inputs["completion_ids"].size(1) + 1
        shared = inputs.get("shared_prefix_length", 0) if can_share_prefix(model) else 0
        cache = {"cache": prefix_cache(model, input_ids[0, :shared], len(input_ids))} if shared else {}
        with contiguous_head_input(self.accelerator.unwrap_model(model)):
            logits = model(
                input_ids=input_ids[:, shared:],
                attention_mask=attention_mask,
                position_ids=position_ids[:, shared:],
                use_cache=bool(shared),
                logits_to_keep=keep,
                **cache,
            ).logits
        return logits[:, -keep:-1, :].float() / self.args.temperature

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """``-mean_i[A_i · log π(y_i|x_i)] + beta · mean_i KL_i``, both aggregated per ``loss_type``."""
        if return_outputs:
            raise ValueError("SVFTrainer.compute_loss has no model outputs to return.")
        if self._nothing_to_learn(inputs):
            return _zero_loss(model)
        logits = self._completion_logits(model, inputs)
        mask = inputs["completion_mask"].float()
        loss_type = self.args.loss_type
        if self.args.beta == 0:
            # As TRL does with beta=0: no base forward at all (about a seventh of a step), and only the
            # sampled tokens' log-probabilities, without a (batch, completion, vocab) log-softmax.
            token_logps = selective_log_softmax(logits, inputs["completion_ids"])
            return -(inputs["advantages"] * aggregate_per_sequence(token_logps, mask, loss_type)).mean()
        logps = torch.log_softmax(logits, dim=-1)  # the exact KL needs the whole distribution
        token_logps = logps.gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
        loss = -(inputs["advantages"] * aggregate_per_sequence(token_logps, mask, loss_type)).mean()

        start = time.perf_counter()
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            base_logps = torch.log_softmax(self._completion_logits(self.accelerator.unwrap_model(model), inputs), -1)
        kl = token_kl(logps, base_logps)
        self._timers["kl_time"] += time.perf_counter() - start
        loss = loss + self.args.beta * aggregate_per_sequence(kl, mask, loss_type).mean()

        kl_sum = self.accelerator.gather((kl.detach() * mask).sum().reshape(1)).sum()
        token_count = self.accelerator.gather(mask.sum().reshape(1)).sum()
        self._metrics["train"]["kl"].append((kl_sum / token_count.clamp(min=1)).item())
        return loss

    def _nothing_to_learn(self, inputs: dict[str, torch.Tensor]) -> bool:
        """True when the loss's gradient is exactly zero whatever the model computes: ``beta`` is 0 and every
        advantage is 0 (a batch whose rewards are all equal). Its forward and backward are then skipped; the
        optimizer still steps with zero gradients, so training goes on exactly as if they had run (a classification
        expert's first steps are such batches: no rollout names the right label yet). In one process only: under
        DDP a backward is also the gradient all-reduce, which every process must join."""
        return self.args.beta == 0 and self.accelerator.num_processes == 1 and not bool(inputs["advantages"].any())

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: list[dict[str, Any]],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Trainer's step plus timing: per optimizer step, rollout vs update (forward, KL, backward) seconds."""
        start = time.perf_counter()
        rollout_before = self._timers["rollout_time"]
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._timers["update_time"] += (
            time.perf_counter() - start - (self._timers["rollout_time"] - rollout_before)
        )
        self._micro_steps += 1
        if self._micro_steps % self.current_gradient_accumulation_steps == 0:
            for key in _TIMERS:
                self._metrics["train"][key].append(self._timers[key])
            self._timers = dict.fromkeys(_TIMERS, 0.0)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the rollout metrics gathered since the last log, averaged, to Trainer's training logs."""
        if self.model.training:
            for key, values in self._metrics["train"].items():
                if values:
                    logs[key] = sum(values) / len(values)
            self._metrics["train"].clear()
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------- evaluation

    def evaluate(
        self,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Greedy completions on the eval set; ``accuracy`` is the share of completions with reward > 0."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        start = time.time()
        self.model.eval()
        rewards, lengths = [], []
        for rows in self.get_eval_dataloader(dataset):
            rollout = self._generate(rows, num_generations=1, sample=False)
            rewards.append(self.accelerator.gather_for_metrics(rollout["rewards"]))
            lengths.append(self.accelerator.gather_for_metrics(rollout["completion_mask"].sum(dim=1)))
        all_rewards, all_lengths = torch.cat(rewards), torch.cat(lengths).float()
        metrics = {
            f"{metric_key_prefix}_accuracy": (all_rewards > 0).float().mean().item(),
            f"{metric_key_prefix}_reward": all_rewards.mean().item(),
            f"{metric_key_prefix}_completion_length": all_lengths.mean().item(),
            f"{metric_key_prefix}_samples": float(all_rewards.numel()),
            f"{metric_key_prefix}_runtime": round(time.time() - start, 4),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---------------------------------------------------------------------------------------- checkpoints

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> Any:
        """Trainer's ``train``, resuming only from a complete checkpoint.

        ``resume_from_checkpoint=True`` takes the newest *complete* ``checkpoint-N`` (warning about any
        newer incomplete one); an explicit checkpoint that is incomplete (for example without
        ``optimizer.pt`` or ``scheduler.pt``) is refused rather than resumed with a fresh optimizer.
        """
        if self.args.should_save:
            for leftover in remove_temp_checkpoints(self.args.output_dir):
                warnings.warn(f"Removed {leftover}, the unfinished save of a killed run.", stacklevel=2)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self._newest_complete_checkpoint()
        elif isinstance(resume_from_checkpoint, str):
            problems = self._checkpoint_problems(resume_from_checkpoint)
            if problems:
                raise ValueError(
                    f"Cannot resume from {resume_from_checkpoint}: {'; '.join(problems)}. Resuming without these "
                    "files would not continue the run (a missing optimizer.pt or scheduler.pt would restart "
                    "AdamW's moments or the learning-rate schedule); pick a complete checkpoint, or pass "
                    "resume_from_checkpoint=True to take the newest complete one."
                )
        # Mixed precision: SVF's factors are cast once for the whole training, not at every forward.
        with factors_in(self.accelerator.unwrap_model(self.model), self._half_dtype()):
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint,
                trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval,
            )

    def _checkpoint_problems(self, checkpoint: str) -> list[str]:
        return checkpoint_problems(checkpoint, self.args.process_index, self.args.world_size)

    def _newest_complete_checkpoint(self) -> str:
        """The newest ``checkpoint-N`` of ``output_dir`` that passes ``checkpoint_problems``."""
        candidates = numbered_checkpoints(self.args.output_dir)
        if not candidates:
            raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        skipped = []
        for checkpoint in candidates:
            problems = self._checkpoint_problems(checkpoint)
            if not problems:
                if skipped:
                    warnings.warn(
                        f"Resuming from {checkpoint}, the newest complete checkpoint; skipped incomplete "
                        + "; ".join(skipped),
                        stacklevel=3,
                    )
                return checkpoint
            skipped.append(f"{os.path.basename(checkpoint)} ({', '.join(problems)})")
        raise ValueError(
            f"No complete checkpoint in {self.args.output_dir} to resume from: " + "; ".join(skipped)
        )

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, written into ``tmp-checkpoint-N`` and renamed to ``checkpoint-N`` when complete.

        The same files and steps as ``Trainer._save_checkpoint`` (transformers 5.24), with the rename (after
        an fsync of every file) between writing the trainer state and rotating old checkpoints, so
        ``save_total_limit`` only ever deletes older checkpoints once the new one is complete.
        """
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        temp = temp_checkpoint_dir(final)
        self.save_model(temp, _internal_call=True)

        strategies = (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST)
        if self.args.save_strategy in strategies and self.state.best_global_step:
            self.accelerator.wait_for_everyone()  # process 0 has published the checkpoints so far
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if best == final or os.path.exists(best):
                self.state.best_model_checkpoint = best

        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(temp)
            self._save_scaler(temp)
            self._save_rng_state(temp)
        if self.args.should_save:
            for callback in [*self.callback_handler.callbacks, self.control]:
                if isinstance(callback, ExportableState):
                    name, state = callback.__class__.__name__, callback.state()
                    if isinstance(self.state.stateful_callbacks[name], list):
                        self.state.stateful_callbacks[name].append(state)
                    else:
                        self.state.stateful_callbacks[name] = state
            self.state.save_to_json(os.path.join(temp, TRAINER_STATE_NAME))

        self.accelerator.wait_for_everyone()  # every process has written its files (its RNG state) into temp
        if self.args.should_save:
            publish_checkpoint(temp, final)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    # ---------------------------------------------------------------------------------------------- Hub

    def create_model_card(self, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """Write the SVF expert card (``peft_svf.hub``) to ``output_dir/README.md``, which ``push_to_hub`` uploads.

        Trainer's generic card knows neither the adapter's parameterisation nor the reward; the other
        arguments of Trainer's card (``language``, ``license``, ...) are accepted and ignored.
        """
        if not self.is_world_process_zero():
            return
        from ..hub import CARD_FILE, expert_model_card, results_from_trainer

        model = self.accelerator.unwrap_model(self.model)
        card = expert_model_card(
            model.peft_config[model.active_adapter],
            results_from_trainer(self),
            repo_id=self.hub_model_id,
            extra_tags=[tags] if isinstance(tags, str) else tags,
        )
        card.save(f"{self.args.output_dir}/{CARD_FILE}")
