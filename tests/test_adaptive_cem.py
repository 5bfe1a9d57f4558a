"""Few-shot CEM (strategy C): it finds the right expert, batched scoring equals member-by-member, results save."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import PeftModel

from adaptive_helpers import EXPERTS, WORDS, tiny_experts
from peft_svf.adaptive import CEMConfig, CEMResult, SelfAdaptiveModel, evaluate_population
from peft_svf.adaptive.mixing import svf_layers
from peft_svf.prompts import render
from tasks_tiny_lm import tiny_chat_lm

QUESTIONS = ["what is two plus three", "write a function", "which letter is the largest", "the answer is"]
TOKENS = 4


def expert_answers(model, tokenizer, expert: str) -> list[str]:
    """What ``expert`` alone answers greedily: the reward below calls exactly these answers correct."""
    model.set_adapter(expert)
    answers = []
    for question in QUESTIONS:
        ids = tokenizer(render(tokenizer, [{"role": "user", "content": question}]), return_tensors="pt",
                        add_special_tokens=False)["input_ids"]  # fmt: skip
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=TOKENS, do_sample=False, pad_token_id=0)
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return answers


def answer_log_probabilities(adaptive_model, read=len) -> tuple[float, int]:
    """Sum and count of the log-probabilities of the code expert's greedy answers to QUESTIONS, by a forward over
    each answer; ``read(answer_ids)`` is how many of its first tokens count."""
    model, tokenizer = adaptive_model.model, adaptive_model.tokenizer
    model.set_adapter("code")
    total, count = 0.0, 0
    for question in QUESTIONS:
        ids = tokenizer(render(tokenizer, [{"role": "user", "content": question}]), return_tensors="pt",
                        add_special_tokens=False)["input_ids"]  # fmt: skip
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=TOKENS, do_sample=False, pad_token_id=0)
            logp = torch.log_softmax(model(out).logits[0, :-1].double(), -1)
        new = out[0, ids.shape[1] :]
        k = read(new)
        total += logp[ids.shape[1] - 1 + torch.arange(k), new[:k]].sum().item()
        count += k
    return total, count


def toy(expert: str = "code"):
    """A few-shot set on which only ``expert`` (and mixtures close to it) answer right."""
    model, tokenizer = tiny_experts(noise=1.5)
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": q}], "target": a}
         for q, a in zip(QUESTIONS, expert_answers(model, tokenizer, expert), strict=True)]
    )  # fmt: skip

    def matches_target(completions, target, **kwargs):
        return [1.0 if c == t else -1.0 for c, t in zip(completions, target, strict=True)]

    return SelfAdaptiveModel(model, tokenizer, EXPERTS), data, matches_target


def test_cem_finds_the_expert_that_is_right():
    adaptive_model, data, reward = toy("code")
    others = evaluate_population(
        adaptive_model, [{"math": 1.0}, {"reasoning": 1.0}], data, reward, max_new_tokens=TOKENS
    )
    assert max(s.accuracy for s in others) < 1.0  # the other experts really answer differently
    result = adaptive_model.adapt(
        data, reward, CEMConfig(population_size=12, generations=3, max_new_tokens=TOKENS, seed=0, progress=False)
    )
    assert isinstance(result, CEMResult) and result.adapter_name == "few_shot"
    assert result.score == 1.0
    assert max(result.alpha, key=result.alpha.get) == "code"
    assert len(result.history) == 3 and result.history[-1]["best_accuracy"] == 1.0
    json.dumps(result.to_dict())
    assert "few_shot" in adaptive_model.model.peft_config
    assert not any(
        name.startswith("__cem") for layer in svf_layers(adaptive_model.model).values() for name in layer.svf_vector
    )


def test_batched_population_scores_equal_member_by_member():
    adaptive_model, data, reward = toy("code")
    rng = np.random.default_rng(0)
    alphas = [dict(zip(EXPERTS, rng.uniform(0, 1, 3).tolist(), strict=True)) for _ in range(6)]
    alphas.append({"code": 1.0})
    batched = evaluate_population(adaptive_model, alphas, data, reward, max_new_tokens=TOKENS, batched=True)
    one_by_one = evaluate_population(adaptive_model, alphas, data, reward, max_new_tokens=TOKENS, batched=False)
    assert [s.correct for s in batched] == [s.correct for s in one_by_one]
    assert [s.accuracy for s in batched] == [s.accuracy for s in one_by_one]
    for a, b in zip(batched, one_by_one, strict=True):
        assert (a.log_likelihood is None) == (b.log_likelihood is None)
        if a.log_likelihood is not None:
            assert a.log_likelihood == pytest.approx(b.log_likelihood, abs=1e-4)
    assert batched[-1].accuracy == 1.0 and batched[-1].log_likelihood < 0


def test_log_likelihood_is_the_mean_token_log_probability_of_correct_answers():
    adaptive_model, data, reward = toy("code")
    (score,) = evaluate_population(adaptive_model, [{"code": 1.0}], data, reward, max_new_tokens=TOKENS)
    total, count = answer_log_probabilities(adaptive_model)
    assert score.log_likelihood == pytest.approx(total / count, abs=1e-4)


def test_scoring_stops_where_the_reward_stops_reading():
    """A reward that reads two words scores the same on completions stopped there, and the tie-break becomes the
    mean log-probability of the tokens up to the stop (computed here by a forward over each answer)."""
    adaptive_model, data, _ = toy("code")

    def first_two_words(completions, target, **kwargs):
        return [1.0 if c.split()[:2] == t.split()[:2] else -1.0 for c, t in zip(completions, target, strict=True)]

    def reading_everything(completions, **kwargs):
        return first_two_words(completions, **kwargs)

    first_two_words.completion_done = lambda text: len(text.split()) >= 2
    alphas = [{"code": 1.0}, {"math": 1.0}, {"code": 0.5, "reasoning": 0.5}]
    stopped = evaluate_population(adaptive_model, alphas, data, first_two_words, max_new_tokens=TOKENS)
    whole = evaluate_population(adaptive_model, alphas, data, reading_everything, max_new_tokens=TOKENS)
    assert [s.correct for s in stopped] == [s.correct for s in whole]
    tokenizer = adaptive_model.tokenizer

    def two_words(new: torch.Tensor) -> int:  # the tokens up to the stop, within the answer up to its first EOS
        eos = (new == tokenizer.eos_token_id).nonzero()
        new = new[: int(eos[0]) + 1] if len(eos) else new
        return next(k for k in range(len(new) + 1)
                    if k == len(new) or len(tokenizer.decode(new[:k], skip_special_tokens=True).split()) >= 2)  # fmt: skip

    total, count = answer_log_probabilities(adaptive_model, two_words)
    assert stopped[0].accuracy == 1.0 and count < len(QUESTIONS) * TOKENS
    assert stopped[0].log_likelihood == pytest.approx(total / count, abs=1e-4)


def test_per_layer_normalised_cem_and_saved_result_round_trip(tmp_path):
    adaptive_model, data, reward = toy("math")
    config = CEMConfig(population_size=4, generations=1, per_layer=True, normalize=True, adapter_name="cem_toy",
                       max_new_tokens=TOKENS, progress=False)  # fmt: skip
    result = adaptive_model.adapt(data, reward, config)
    modules = list(svf_layers(adaptive_model.model))
    assert set(result.alpha) == set(EXPERTS) and all(set(a) == set(modules) for a in result.alpha.values())
    for module in modules:
        assert sum(result.alpha[e][module] for e in EXPERTS) == pytest.approx(1.0)
    adaptive_model.model.save_pretrained(tmp_path, selected_adapters=["cem_toy"])
    fresh, _ = tiny_chat_lm(WORDS)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "cem_toy", adapter_name="cem_toy").eval()
    adaptive_model.model.set_adapter("cem_toy")
    ids = torch.arange(3, 14)[None]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, adaptive_model.model(ids).logits)
    with pytest.raises(ValueError, match="exists already"):
        adaptive_model.adapt(data, reward, config)


def test_cem_result_is_usable_as_a_fixed_mixture():
    adaptive_model, data, reward = toy("code")
    result = adaptive_model.adapt(
        data, reward, CEMConfig(population_size=6, generations=1, max_new_tokens=TOKENS, progress=False)
    )
    adaptive_model.use_mixture(result.adapter_name)
    out = adaptive_model.generate(prompts=[data[0]["prompt"]], max_new_tokens=TOKENS, do_sample=False)
    adaptive_model.use_mixture(result.alpha)
    assert torch.equal(adaptive_model.generate(prompts=[data[0]["prompt"]], max_new_tokens=TOKENS, do_sample=False), out)


def test_first_release_keyword_arguments_still_work_with_a_future_warning():
    adaptive_model, data, reward = toy("code")
    settings = {"population_size": 6, "generations": 2, "max_new_tokens": TOKENS, "progress": False}
    with pytest.warns(FutureWarning, match="CEMConfig"):
        old = adaptive_model.adapt(data, reward, adapter_name="old", **settings)
    new = adaptive_model.adapt(data, reward, CEMConfig(adapter_name="new", **settings))
    assert old.alpha == new.alpha and old.history == new.history
    with pytest.raises(TypeError, match="populaton_size"):
        adaptive_model.adapt(data, reward, populaton_size=6)


@pytest.mark.parametrize(
    "bad",
    [{"population_size": 1}, {"elite_ratio": 0.0}, {"elite_ratio": 1.5}, {"generations": 0},
     {"max_new_tokens": 0}, {"batch_size": 0}, {"per_row_rank": 0}, {"per_row_rank": 1.5},
     {"per_row_rank": True}],
)  # fmt: skip
def test_cem_config_refuses_bad_settings_naming_the_field(bad):
    (field,) = bad
    with pytest.raises(ValueError, match=field):
        CEMConfig(**bad)


def test_greedy_log_likelihoods_of_mixed_rows_of_different_lengths():
    """Rows under different adapters, with prompts of different lengths and completions that end at different
    steps (one token is made end-of-sequence), left-padded in one generate call: each row's recorded
    log-likelihood against the row alone, its prompt and completion scored with a float64 log-softmax."""
    from peft_svf.adaptive.generation import greedy_texts

    adaptive_model, _, _ = toy("code")
    model, tokenizer = adaptive_model.model, adaptive_model.tokenizer
    texts = [render(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    rows = ["code", "math", "reasoning"]
    free = greedy_texts(model, tokenizer, texts, rows, max_new_tokens=6)
    model.generation_config.eos_token_id = int(free.generated[0][1])  # row 0 now stops after two tokens
    out = greedy_texts(model, tokenizer, texts, rows, max_new_tokens=6, log_likelihoods=True)
    assert len(out.generated[0]) == 2 and max(len(g) for g in out.generated) > 2
    for text, new, adapter, got in zip(texts, out.generated, rows, out.log_likelihoods, strict=True):
        prompt = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        model.set_adapter(adapter)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.cat([prompt, new])[None]).logits[0, :-1].double(), -1)
        expected = logp[len(prompt) - 1 + torch.arange(len(new)), new].sum().item()
        assert got == pytest.approx(expected, abs=1e-4)
