"""``train_expert``'s candidates: several seeds probed to their first validation, the best one finished."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from peft_svf.tasks import Task
from peft_svf.trainer.recipe import CANDIDATE_SEED_STRIDE, train_expert
from trainer_fixtures import prompts, starts_with, tiny_llama, tiny_tokenizer

SETTINGS = dict(steps=4, batch=4, lr=0.3, eval_steps=2, valid_n=8, test_n=0, progress=False)


def toy_task() -> Task:
    splits = {"train": Dataset.from_dict({"prompt": prompts(32, seed=0)}),
              "test": Dataset.from_dict({"prompt": prompts(8, seed=1)})}  # fmt: skip
    return Task("toy_recipe_starts_with_e", "toy", splits.__getitem__, starts_with, max_new_tokens=3)


def vectors(expert_dir) -> dict[str, torch.Tensor]:
    return load_file(str(expert_dir / "adapter_model.safetensors"))


def test_the_best_candidate_at_the_first_validation_is_finished_as_if_it_ran_alone(tmp_path):
    tokenizer, task = tiny_tokenizer(), toy_task()
    # beta pinned at 0: the seed below was picked for candidates that validate apart at that coefficient.
    settings = {**SETTINGS, "beta": 0.0}
    results = train_expert(tiny_llama(len(tokenizer)), tokenizer, task, tmp_path / "two", candidates=2,
                           seed=12, **settings)  # fmt: skip
    probes = results["candidates"]
    assert [p["seed"] for p in probes] == [12, 12 + CANDIDATE_SEED_STRIDE]
    # With seed 12 the second candidate validates better (0.5 against 0.0 here), so it is the one resumed.
    assert probes[1]["valid_accuracy"] > probes[0]["valid_accuracy"], probes
    assert results["chosen_seed"] == 12 + CANDIDATE_SEED_STRIDE
    assert sorted(results["valid_accuracy_by_step"]) == [2, 4]

    # Each probe's validation is the one its seed reaches at that step in a plain run, and the finished
    # candidate is bit for bit the plain run of its seed (resumed from the probe's checkpoint).
    for probe in probes:
        alone = train_expert(tiny_llama(len(tokenizer)), tokenizer, task, tmp_path / f"alone-{probe['seed']}",
                             seed=probe["seed"], **settings)  # fmt: skip
        assert alone["valid_accuracy_by_step"][2] == probe["valid_accuracy"]
        if probe["seed"] == results["chosen_seed"]:
            assert alone["valid_accuracy_by_step"] == results["valid_accuracy_by_step"]
            chosen, plain = (
                vectors(tmp_path / "two" / "expert"),
                vectors(tmp_path / f"alone-{probe['seed']}" / "expert"),
            )
            assert chosen.keys() == plain.keys()
            assert all(torch.equal(chosen[k], plain[k]) for k in chosen)
    stored = json.loads((tmp_path / "two" / "results.json").read_text())
    assert stored["settings"]["candidates"] == 2 and stored["chosen_seed"] == results["chosen_seed"]


@pytest.mark.parametrize(("listed", "steps", "probed"), [(True, 4, 2), (True, 2, 1), (False, 4, 1)])
def test_without_candidates_the_recipe_probes_the_tasks_validated_count(tmp_path, monkeypatch, listed, steps, probed):
    """``candidates=None``: the count validation chose for the task (``TASK_CANDIDATES``), one for other tasks,
    and one where training ends at the first validation (a probe would be the whole run, not an error)."""
    import peft_svf.trainer.recipe as recipe

    tokenizer, task = tiny_tokenizer(), toy_task()
    table = {("svf", task.name): 2} if listed else {}
    monkeypatch.setattr(recipe, "TASK_CANDIDATES", table)
    results = train_expert(tiny_llama(len(tokenizer)), tokenizer, task, tmp_path, **{**SETTINGS, "steps": steps})
    assert results["settings"]["candidates"] == probed
    assert len(results.get("candidates", [None])) == probed
    assert recipe.recipe_candidates("svf", task.name, 3, steps=steps, eval_steps=2) == 3  # given: kept


@pytest.mark.parametrize(("candidates", "steps", "match"), [(0, 4, "candidates must be >= 1"),
                                                            (2, 2, "first validation")])  # fmt: skip
def test_candidates_need_steps_after_the_first_validation(tmp_path, candidates, steps, match):
    tokenizer = tiny_tokenizer()
    settings = {**SETTINGS, "steps": steps}
    with pytest.raises(ValueError, match=match):
        train_expert(
            tiny_llama(len(tokenizer)), tokenizer, toy_task(), tmp_path, candidates=candidates, **settings
        )


# The toy model's layers repay a merge from about 40 tokens (path_costs): 8 items x 8 tokens do, 8 x 3 do not.
@pytest.mark.parametrize(("max_new_tokens", "merged"), [(8, True), (3, False)])
def test_the_expert_is_tested_merged_when_it_pays_and_its_weights_come_back(
    tmp_path, monkeypatch, max_new_tokens, merged
):
    """The expert's test runs with the vectors in the dense weights (base speed per token) when its tokens repay
    building them; afterwards every layer holds its original weight tensor again, and the score is the
    unmerged model's, item for item, scored one prompt at a time (the test's own batches are of 3, 3 and 2)."""
    import peft_svf.trainer.recipe as recipe
    from peft_svf.svf.layer import SVFLayer
    from peft_svf.tasks import evaluate

    calls = []

    def recording_evaluate(model, *args, **kwargs):
        layers = [m for m in model.modules() if isinstance(m, SVFLayer)]
        calls.append({"merged": [layer.merged for layer in layers], "batch_size": kwargs["batch_size"],
                      "disabled": [layer.disable_adapters for layer in layers]})  # fmt: skip
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(recipe, "evaluate", recording_evaluate)
    tokenizer, task = tiny_tokenizer(), toy_task()
    model = tiny_llama(len(tokenizer))
    originals = {name: param.data_ptr() for name, param in model.named_parameters()}
    settings = {**SETTINGS, "test_n": 8, "test_batch_size": 3, "max_new_tokens": max_new_tokens}
    results = train_expert(model, tokenizer, task, tmp_path, seed=3, **settings)
    base_call, expert_call = calls
    assert base_call["batch_size"] == expert_call["batch_size"] == 3
    assert all(base_call["disabled"]) and not any(base_call["merged"])
    assert expert_call["merged"] == [merged] * len(expert_call["merged"]) and not any(expert_call["disabled"])

    layers = [m for m in model.modules() if isinstance(m, SVFLayer)]
    assert layers and not any(layer.merged for layer in layers)
    base_weights = {
        n.replace(".base_layer", ""): p.data_ptr() for n, p in model.named_parameters() if "svf_" not in n
    }
    assert all(base_weights[name] == ptr for name, ptr in originals.items()), "a weight tensor was replaced"
    with torch.no_grad():
        unmerged = evaluate(
            model, task, tokenizer, split="test", n=8, batch_size=1, max_new_tokens=max_new_tokens, progress=False
        )
    assert results["expert_test_items"] == [int(r["correct"]) for r in unmerged.records]
