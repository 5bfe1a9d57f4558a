"""The evaluator on the real embedded SmolLM2-135M-Instruct (few items: a smoke test of the real path)."""

import pytest

from peft_svf.tasks import evaluate, generate_completions, get_task

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def embedded():
    from peft_svf.embedded import load_embedded_model

    return load_embedded_model()


def test_batched_generation_matches_unbatched_on_the_real_model(embedded):
    model, tokenizer = embedded
    prompts = list(get_task("offline_math").load("test").select(range(4))["prompt"])
    prompts[1] = [{"role": "user", "content": prompts[1][0]["content"] + " Please think very carefully first."}]
    batched = generate_completions(model, tokenizer, prompts, max_new_tokens=12, batch_size=4, progress=False)
    single = [generate_completions(model, tokenizer, [p], max_new_tokens=12, progress=False)[0] for p in prompts]
    assert batched == single


def test_evaluate_on_an_offline_task(embedded):
    model, tokenizer = embedded
    task = get_task("offline_reasoning_letters")
    result = evaluate(model, task, tokenizer, n=8, batch_size=8, max_new_tokens=12, progress=False)
    assert result.n == 8
    rescored = task.reward([r["completion"] for r in result.records], **{
        c: list(task.load("test").select(range(8))[c]) for c in ("answer", "choice_labels")})  # fmt: skip
    assert [s > 0 for s in rescored] == [r["correct"] for r in result.records]
    assert result.accuracy == sum(r["correct"] for r in result.records) / 8
    assert all(r["completion"].strip() for r in result.records)  # the chat template was applied: it answers
