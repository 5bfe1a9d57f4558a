"""evaluate(): batched, left-padded greedy generation must give what one-at-a-time generation gives."""

import pytest
from datasets import Dataset

from peft_svf.tasks import evaluate, generate_completions, pass_at_k
from peft_svf.tasks.registry import Task, chat_prompt
from tasks_tiny_lm import tiny_chat_lm


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_lm(["what", "is", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "plus", "minus", "the", "answer", "yes", "no"])


def _dataset():
    questions = ["what is one plus two", "what is three", "nine minus four minus the answer", "yes", "what is six plus six plus six"]
    return Dataset.from_list([{"prompt": chat_prompt(q), "target": i % 2} for i, q in enumerate(questions)])


def parity_reward(completions, target, **_):
    """+1 when the completion's word count has the row's parity: arbitrary but computable independently."""
    return [1.0 if len(c.split()) % 2 == t else -1.0 for c, t in zip(completions, target, strict=True)]


def test_batched_generation_matches_one_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = list(_dataset()["prompt"])
    batched = generate_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=3, progress=False)
    single = [generate_completions(model, tokenizer, [p], max_new_tokens=6, progress=False)[0] for p in prompts]
    assert batched == single


def test_evaluate_accuracy_records_and_normalised_score(tiny):
    model, tokenizer = tiny
    data = _dataset()
    result = evaluate(model, data, tokenizer, reward=parity_reward, max_new_tokens=6, batch_size=2,
                      base_accuracy=0.5, progress=False)  # fmt: skip
    # Independent computation: unbatched generation and the reward applied by hand.
    expected = []
    for row in data:
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        completion = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        expected.append(parity_reward([completion], [row["target"]])[0] > 0)
    assert [r["correct"] for r in result.records] == expected
    assert result.n == 5 and result.correct == sum(expected)
    assert result.accuracy == pytest.approx(sum(expected) / 5)
    assert result.normalized_score == pytest.approx(result.accuracy / 0.5)
    assert evaluate(model, data, tokenizer, reward=parity_reward, max_new_tokens=6, n=2, progress=False).n == 2


def test_evaluate_works_through_a_peft_model_and_a_registered_task(tiny):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=True))
    task = Task("parity_test", "other", lambda split: _dataset(), parity_reward, max_new_tokens=6)
    via_peft = evaluate(peft_model, task, tokenizer, progress=False)
    peft_model.unload()  # restore the plain model for the other tests
    plain = evaluate(model, task, tokenizer, progress=False)
    assert [r["completion"] for r in via_peft.records] == [r["completion"] for r in plain.records]


def test_evaluate_needs_a_reward_for_a_bare_dataset(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="reward"):
        evaluate(model, _dataset(), tokenizer, progress=False)


def test_pass_at_k_equals_greedy_accuracy_when_sampling_cold(tiny):
    model, tokenizer = tiny
    data = _dataset()
    greedy = evaluate(model, data, tokenizer, reward=parity_reward, max_new_tokens=4, progress=False).accuracy
    # A near-zero temperature makes every sample the greedy one, so pass@k equals greedy accuracy.
    cold = pass_at_k(model, data, tokenizer, k=3, reward=parity_reward, max_new_tokens=4, temperature=1e-4,
                     progress=False)  # fmt: skip
    assert cold == pytest.approx(greedy)


def first_two_words_reward(completions, target, **_):
    """Reads the first two words only, and says so: generation may stop once there are two."""
    return parity_reward([" ".join(c.split()[:2]) for c in completions], target)


first_two_words_reward.completion_done = lambda text: len(text.split()) >= 2


def test_evaluate_stops_where_the_reward_stops_reading(tiny):
    """Each completion is the unstopped one cut after its second word (a row that ends sooner is unchanged),
    scored the same; the tiny tokenizer's pad is not its EOS, so the cut is not EOS bookkeeping."""
    model, tokenizer = tiny
    data = _dataset()
    whole = [c[0] for c in generate_completions(model, tokenizer, list(data["prompt"]), max_new_tokens=6,
                                                batch_size=2, progress=False)]  # fmt: skip
    stopped = evaluate(model, data, tokenizer, reward=first_two_words_reward, max_new_tokens=6, batch_size=2,
                       progress=False)  # fmt: skip
    assert [r["completion"] for r in stopped.records] == [" ".join(c.split()[:2]) for c in whole]
    assert any(len(c.split()) > 2 for c in whole)  # some rows were stopped
    assert [r["reward"] for r in stopped.records] == first_two_words_reward(whole, data["target"])
