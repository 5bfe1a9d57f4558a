"""SelfAdaptiveModel: two-pass generation, routing, state hygiene, evaluate() and loading."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from adaptive_helpers import (
    EXPERTS,
    WORDS,
    ScriptedDispatcher,
    assert_same_state,
    one_hot,
    snapshot,
    tiny_experts,
)
from peft_svf.adaptive import (
    DispatchDecision,
    PromptDispatcher,
    SelfAdaptiveModel,
    SoftPromptDispatcher,
    dispatch_confusion,
    mix_svf_adapters,
)
from peft_svf.adaptive.dispatch import ASSISTANT_PREFIX, label_first_tokens
from peft_svf.adaptive.generation import GreedyTexts, greedy_texts, last_token_logits
from peft_svf.prefix import shared_prefix_length
from peft_svf.prompts import questions_from_ids, render
from peft_svf.svf.merging import worth_merging
from peft_svf.tasks import evaluate, generate_completions
from tasks_tiny_lm import tiny_chat_lm

QUESTIONS = ["what is two plus three", "write a function", "which letter is the largest", "the answer"]
GREEDY = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def alone(model, tokenizer, question: str, adapter: str | None, **kwargs) -> torch.Tensor:
    """Greedy new tokens for one prompt, generated alone with one adapter active (None: base)."""
    ids = tokenizer(render(tokenizer, chat(question)), return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                out = model.generate(input_ids=ids, pad_token_id=tokenizer.pad_token_id, **kwargs)
        else:
            model.set_adapter(adapter)
            out = model.generate(input_ids=ids, pad_token_id=tokenizer.pad_token_id, **kwargs)
    return out[0, ids.shape[1] :]


def new_tokens(out: torch.Tensor, width: int) -> list[torch.Tensor]:
    return list(out[:, width:])


def test_mixed_dispatch_batch_equals_one_prompt_at_a_time():
    model, tokenizer = tiny_experts()
    mix_svf_adapters(model, {"math": 0.2, "code": 0.5}, "ref")
    soft = DispatchDecision("code", {"math": 0.2, "code": 0.5, "reasoning": 0.0})
    table = {
        QUESTIONS[0]: one_hot("math"),
        QUESTIONS[1]: soft,
        QUESTIONS[2]: one_hot(None),
        QUESTIONS[3]: one_hot("code"),
    }
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher=ScriptedDispatcher(table))
    out = adaptive_model.generate(prompts=[chat(q) for q in QUESTIONS], **GREEDY)
    width = out.shape[1] - GREEDY["max_new_tokens"]
    expected = [alone(model, tokenizer, QUESTIONS[0], "math", **GREEDY), alone(model, tokenizer, QUESTIONS[1], "ref", **GREEDY),
                alone(model, tokenizer, QUESTIONS[2], None, **GREEDY), alone(model, tokenizer, QUESTIONS[3], "code", **GREEDY)]  # fmt: skip
    for got, want in zip(new_tokens(out, width), expected, strict=True):
        assert torch.equal(got, want)
    assert len({tuple(t.tolist()) for t in expected}) > 1  # the routes really differ
    assert [d.label for d in adaptive_model.last_decisions] == ["math", "code", "others", "code"]


@pytest.mark.parametrize("merge", [True, False, "auto"])
def test_single_expert_batch_equals_that_expert(merge):
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(
        model,
        tokenizer,
        EXPERTS,
        dispatcher=ScriptedDispatcher(dict.fromkeys(QUESTIONS, one_hot("reasoning"))),
        merge=merge,
    )
    out = adaptive_model.generate(prompts=[chat(q) for q in QUESTIONS[:2]], **GREEDY)
    width = out.shape[1] - GREEDY["max_new_tokens"]
    for got, question in zip(new_tokens(out, width), QUESTIONS[:2], strict=True):
        assert torch.equal(got, alone(model, tokenizer, question, "reasoning", **GREEDY))


def routes_for_state_tests():
    return {QUESTIONS[0]: one_hot("math"), QUESTIONS[1]: DispatchDecision(None, {"math": 0.5, "code": 0.5}),
            QUESTIONS[2]: one_hot(None), QUESTIONS[3]: one_hot("code")}  # fmt: skip


@pytest.mark.parametrize("questions", [QUESTIONS, QUESTIONS[3:]], ids=["mixed", "single-merged"])
def test_model_state_unchanged_after_generate(questions):
    model, tokenizer = tiny_experts()
    model.set_adapter("code")
    model.train()
    model.base_model.model.lm_head.train(False)  # an irregular training pattern must survive too
    before = snapshot(model)
    adaptive_model = SelfAdaptiveModel(
        model, tokenizer, EXPERTS, dispatcher=ScriptedDispatcher(routes_for_state_tests()), merge=True
    )
    adaptive_model.generate(prompts=[chat(q) for q in questions], max_new_tokens=3)
    assert_same_state(before, snapshot(model))


@pytest.mark.parametrize("questions", [QUESTIONS, QUESTIONS[3:]], ids=["mixed", "single-merged"])
def test_model_state_unchanged_after_an_error_inside_generation(questions):
    model, tokenizer = tiny_experts()
    model.set_adapter("math")
    before = snapshot(model)

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    handle = model.base_model.model.model.layers[1].register_forward_pre_hook(explode)
    adaptive_model = SelfAdaptiveModel(
        model, tokenizer, EXPERTS, dispatcher=ScriptedDispatcher(routes_for_state_tests()), merge=True
    )
    with pytest.raises(RuntimeError, match="boom"):
        adaptive_model.generate(prompts=[chat(q) for q in questions], max_new_tokens=3)
    handle.remove()
    assert_same_state(before, snapshot(model))


def test_prompt_dispatcher_parses_boxed_labels_and_falls_back_to_base(monkeypatch):
    model, tokenizer = tiny_experts()
    answers = ["Classification: \\boxed{Code}", "I think math", "\\boxed{others}", "\\boxed{reasoning}"]
    seen = {}

    def fake_pass_one(model_, tokenizer_, texts, rows, **kwargs):
        seen["texts"], seen["rows"] = texts, rows
        return GreedyTexts(answers, [], None)

    monkeypatch.setattr("peft_svf.adaptive.dispatch.greedy_texts", fake_pass_one)
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher="prompt")
    decisions = adaptive_model.dispatch([chat(q) for q in QUESTIONS])
    assert [d.label for d in decisions] == ["code", "others", "others", "reasoning"]
    assert decisions[0].alpha == {"math": 0.0, "code": 1.0, "reasoning": 0.0}
    assert decisions[1].alpha == dict.fromkeys(EXPERTS, 0.0) and decisions[1].route() == ("__base__", None)
    assert seen["rows"] == ["__base__"] * 4  # strategy A: pass 1 with the base weights
    assert (
        "'code', 'math'" not in seen["texts"][0]
        and "'math', 'code', 'reasoning', or 'others'" in seen["texts"][0]
    )
    assert QUESTIONS[0] in seen["texts"][0]


def test_unparsable_pass_one_answer_generates_with_base_weights():
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher=PromptDispatcher(max_new_tokens=4))
    out = adaptive_model.generate(prompts=[chat(q) for q in QUESTIONS[:1]], **GREEDY)
    assert adaptive_model.last_decisions[0].label == "others"  # a random tiny model never writes \boxed{label}
    assert torch.equal(
        out[0, -GREEDY["max_new_tokens"] :], alone(model, tokenizer, QUESTIONS[0], None, **GREEDY)
    )


def test_classifier_dispatcher_runs_pass_one_with_the_classification_expert(monkeypatch):
    model, tokenizer = tiny_experts()
    mix_svf_adapters(model, {"math": 1.0, "code": 1.0}, "task_classifier")
    seen = {}

    def greedy(model, tokenizer, texts, rows, **kwargs):  # what z_c writes after the prefilled answer start
        seen.update(texts=texts, rows=rows)
        return GreedyTexts(["math}"] * len(rows), [], None)

    monkeypatch.setattr("peft_svf.adaptive.dispatch.greedy_texts", greedy)
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher="classifier")
    decisions = adaptive_model.dispatch(QUESTIONS[:2])
    assert [(d.label, d.text) for d in decisions] == [("math", "Classification: \\boxed{math}")] * 2
    assert seen["rows"] == ["task_classifier"] * 2
    assert all(text.endswith("Classification: \\boxed{") for text in seen["texts"])  # as z_c was trained
    with pytest.raises(ValueError, match="classification expert"):
        SelfAdaptiveModel(tiny_experts()[0], tokenizer, EXPERTS, dispatcher="classifier")


def test_soft_dispatch_reads_label_probabilities_after_boxed():
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher="soft")
    decisions = adaptive_model.dispatch([chat(q) for q in QUESTIONS[:2]])
    labels = [*EXPERTS, "others"]
    tokens = list(label_first_tokens(tokenizer, "Classification: \\boxed{", labels).values())
    for decision, question in zip(decisions, QUESTIONS[:2], strict=True):
        text = adaptive_model.dispatcher.pass_one_texts([chat(question)])[0]
        assert text.endswith("Classification: \\boxed{")
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad(), model.disable_adapter():
            probs = torch.softmax(model(ids).logits[0, -1].double(), -1)[tokens]
        probs = probs / probs.sum()
        assert decision.probabilities == pytest.approx(
            dict(zip(labels, probs.tolist(), strict=True)), abs=1e-5
        )
        assert decision.alpha == pytest.approx({e: decision.probabilities[e] for e in EXPERTS})
        assert decision.base == pytest.approx(decision.probabilities["others"])
        assert decision.label == max(labels, key=decision.probabilities.get)
    out = adaptive_model.generate(prompts=[chat(q) for q in QUESTIONS[:2]], max_new_tokens=3)  # per-prompt mixtures
    assert out.shape[0] == 2


def test_soft_dispatch_refuses_labels_sharing_a_first_token():
    _, tokenizer = tiny_chat_lm(["code", "x"])
    with pytest.raises(ValueError, match="distinct"):  # both unknown words: the same <unk> token
        label_first_tokens(tokenizer, "x ", ["code", "zebra", "yak"])


def test_questions_are_recovered_from_chat_token_ids():
    _, tokenizer = tiny_experts()
    texts = [render(tokenizer, chat(q)) for q in QUESTIONS[:2]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    assert questions_from_ids(tokenizer, enc["input_ids"], enc["attention_mask"]) == QUESTIONS[:2]


def test_evaluate_accepts_a_self_adaptive_model():
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher="soft")
    adaptive_model.use_mixture("code")
    result = evaluate(adaptive_model, "offline_math", tokenizer, split="test", n=3, max_new_tokens=4, progress=False)
    model.set_adapter("code")
    plain = evaluate(model, "offline_math", tokenizer, split="test", n=3, max_new_tokens=4, progress=False)
    assert [r["completion"] for r in result.records] == [r["completion"] for r in plain.records]
    assert len(adaptive_model.last_decisions) == 3 and all(d.adapter == "code" for d in adaptive_model.last_decisions)
    adaptive_model.use_mixture(None)
    assert isinstance(adaptive_model.dispatcher, SoftPromptDispatcher)
    completions = generate_completions(
        adaptive_model, tokenizer, [chat(q) for q in QUESTIONS], max_new_tokens=2, progress=False
    )
    assert len(completions) == 4 and not adaptive_model.training


def test_completions_of_mixed_rows_stop_where_asked():
    """The answer pass passes a stopping criterion through to the mixed-adapter ``generate``: each row is its
    unstopped completion cut after two words."""
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher=ScriptedDispatcher(routes_for_state_tests()))
    prompts = [chat(q) for q in QUESTIONS]
    whole = generate_completions(adaptive_model, tokenizer, prompts, max_new_tokens=6, progress=False)
    stopped = generate_completions(adaptive_model, tokenizer, prompts, max_new_tokens=6, progress=False,
                                   stop_when=lambda text: len(text.split()) >= 2)  # fmt: skip
    assert any(len(c[0].split()) > 2 for c in whole)
    assert stopped == [[" ".join(c[0].split()[:2])] for c in whole]


def test_use_mixture_alpha_equals_the_mixed_adapter():
    model, tokenizer = tiny_experts()
    alpha = {"math": 0.3, "code": 0.6, "reasoning": 0.1}
    mix_svf_adapters(model, alpha, "mixed")
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS)
    adaptive_model.use_mixture(alpha)
    out = adaptive_model.generate(prompts=[chat(QUESTIONS[0])], **GREEDY)
    assert torch.equal(out[0, -5:], alone(model, tokenizer, QUESTIONS[0], "mixed", **GREEDY))


def test_from_pretrained_loads_local_expert_dirs(tmp_path):
    model, tokenizer = tiny_experts()
    model.save_pretrained(tmp_path / "experts")
    base_dir = tmp_path / "base"
    fresh, _ = tiny_chat_lm(WORDS)
    fresh.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    dirs = {name: tmp_path / "experts" / name for name in EXPERTS}  # PEFT saves named adapters in subfolders
    adaptive_model = SelfAdaptiveModel.from_pretrained(
        base_dir, experts=dirs, dispatcher="prompt", classifier=tmp_path / "experts" / "code"
    )
    assert isinstance(adaptive_model.model, PeftModel) and adaptive_model.experts == EXPERTS
    assert "task_classifier" in adaptive_model.model.peft_config
    ids = torch.arange(3, 12)[None]
    with torch.no_grad():
        for name in EXPERTS:
            model.set_adapter(name)
            adaptive_model.model.set_adapter(name)
            assert torch.equal(model(ids).logits, adaptive_model.model(ids).logits)
    assert adaptive_model.tokenizer.chat_template == tokenizer.chat_template


def test_dispatch_confusion_counts():
    model, tokenizer = tiny_experts()
    table = {"q1": one_hot("math"), "q2": one_hot("code"), "q3": one_hot(None), "q4": one_hot("math")}
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher=ScriptedDispatcher(table))
    confusion = dispatch_confusion(adaptive_model, {"math": ["q1", "q2"], "code": ["q3", "q4", "q2"]})
    assert confusion["labels"] == ["math", "code", "others"]
    assert confusion["matrix"] == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert confusion["fractions"][0] == [0.5, 0.5, 0.0] and confusion["n"] == 5
    json.dumps(confusion)
    assert dispatch_confusion(adaptive_model.dispatcher, {"math": ["q1"]})["matrix"][0][0] == 1


def test_generate_argument_errors():
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS)
    with pytest.raises(ValueError, match="adapter_names"):
        adaptive_model.generate(prompts=["x"], adapter_names=["math"])
    with pytest.raises(ValueError, match="not adapters"):
        SelfAdaptiveModel(model, tokenizer, ["math", "typo"])
    with pytest.raises(ValueError, match="unknown dispatcher"):
        SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher="psychic")


def test_pass_one_shared_prefix_cache_is_exact():
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher="prompt")
    texts = adaptive_model.dispatcher.pass_one_texts([chat(q) for q in QUESTIONS])
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert shared_prefix_length(rows) > 100  # the classification instructions
    kwargs = {"max_new_tokens": 6, "batch_size": 3}
    shared = greedy_texts(model, tokenizer, texts, ["__base__"] * 4, share_prefix=True, **kwargs)
    plain = greedy_texts(model, tokenizer, texts, ["__base__"] * 4, share_prefix=False, **kwargs)
    assert shared.completions == plain.completions
    assert all(torch.equal(a, b) for a, b in zip(shared.generated, plain.generated, strict=True))
    with torch.no_grad(), model.disable_adapter():
        cached = last_token_logits(model, rows, tokenizer.pad_token_id, batch_size=3)
        alone_logits = torch.stack([model(torch.tensor([r])).logits[0, -1] for r in rows])
    torch.testing.assert_close(cached, alone_logits, atol=1e-5, rtol=1e-5)


def test_pass_one_rows_stop_once_answered():
    model, tokenizer = tiny_experts()
    texts = [render(tokenizer, chat(q)) for q in QUESTIONS[:3]]
    completions, generated, _ = greedy_texts(model, tokenizer, texts, ["math"] * 3, max_new_tokens=8,
                                             stop_when=lambda text: len(text.split()) >= 2)  # fmt: skip
    assert [len(c.split()) for c in completions] == [2, 2, 2]
    assert all(len(g) < 8 and g[-1] != tokenizer.pad_token_id for g in generated)


@pytest.mark.parametrize(("prefix", "completion", "answered"), [
    ("", "Classification: \\boxed{math}", True),
    ("", "Classification: \\boxed{\\text{code}}", True),  # nested braces: closed once the outer one is
    ("", "Classification: \\boxed{\\text{code}", False),
    ("", "Classification: \\boxed math", False),
    (ASSISTANT_PREFIX, "reasoning}", True),
    (ASSISTANT_PREFIX, "reason", False),
])  # fmt: skip
def test_pass_one_stops_once_the_first_box_has_closed(prefix, completion, answered):
    """Pass 1 stops a row where the label it reads (the first box, parse_task_label) can no longer change."""
    assert PromptDispatcher(assistant_prefix=prefix)._answered(completion) is answered


def test_auto_merge_pays_only_for_long_generations():
    model, _ = tiny_experts()
    assert not worth_merging(model, "math", tokens=4)
    assert worth_merging(model, "math", tokens=10_000)


def test_sampled_mixed_rows_with_several_returns_per_prompt():
    model, tokenizer = tiny_experts()
    adaptive_model = SelfAdaptiveModel(
        model, tokenizer, EXPERTS, dispatcher=ScriptedDispatcher(routes_for_state_tests())
    )
    torch.manual_seed(0)
    out = adaptive_model.generate(
        prompts=[chat(q) for q in QUESTIONS], max_new_tokens=3, do_sample=True, num_return_sequences=2
    )
    assert out.shape[0] == 8
