"""A failed SVF load changes nothing, and a saved adapter config cannot choose this machine's paths.

Every bad adapter is loaded twice: with ``PeftModel.from_pretrained`` onto a plain model and with
``load_adapter`` onto a ``PeftModel`` that already has an adapter. Each must raise an error naming the
field or the file, and leave the model bit-identical: same module tree and types, same state-dict tensors
(``torch.equal``), same ``requires_grad`` flags, same logits, same PEFT bookkeeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from peft_svf import SVFConfig
from peft_svf.hub import push_expert_to_hub
from peft_svf.svf import layer as layer_module
from peft_svf.svf.config import LOCAL_FIELDS
from tiny_models import make_tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def save_adapter(path: Path, model=None, **config) -> Path:
    model = model if model is not None else make_tiny_llama()
    config = {"target_modules": TARGETS, "init_weights": False, **config}
    get_peft_model(model, SVFConfig(**config)).save_pretrained(path)
    return path


def edit_config(path: Path, **changes) -> Path:
    saved = json.loads((path / CONFIG).read_text())
    (path / CONFIG).write_text(json.dumps({**saved, **changes}))
    return path


def edit_weights(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    tensors = load_file(path / WEIGHTS)
    change(tensors)
    save_file(tensors, path / WEIGHTS)
    return path


def first_vector_to_nan(tensors: dict[str, torch.Tensor]) -> None:
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))


def add_base_weight(tensors: dict[str, torch.Tensor]) -> None:
    """An adapter file that also tries to overwrite a base weight (PEFT passes unknown keys through)."""
    tensors["base_model.model.lm_head.weight"] = torch.zeros(96, 32)


def truncate(path: Path) -> Path:
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    return path


def garbage(path: Path) -> Path:
    (path / WEIGHTS).write_bytes(b"\x00\xff" * 300)
    return path


def pickled_weights_only(path: Path) -> Path:
    """The weights as ``adapter_model.bin`` (a pickle), as an old or hostile repo may ship them."""
    torch.save(load_file(path / WEIGHTS), path / "adapter_model.bin")
    (path / WEIGHTS).unlink()
    return path


def broken_config(path: Path) -> Path:
    (path / CONFIG).write_text('{"peft_type": "SVF", ')
    return path


def empty_header(path: Path) -> Path:
    (path / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00" + b"{}      ")
    return path


# name -> (how to make the bad adapter folder from a fresh one, pattern the error message must match)
BAD_ADAPTERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "another base (wider)": (
        lambda p: save_adapter(p, make_tiny_llama(hidden=48)),
        r"q_proj'.*shape \(48,\).*needs \(32,\)",
    ),
    "another base (more layers)": (
        lambda p: save_adapter(p, make_tiny_llama(layers=3)),
        r"layers\.2\.self_attn\.q_proj'.*does not adapt",
    ),
    "modules this base lacks": (
        lambda p: edit_config(save_adapter(p), target_modules=["c_attn", "c_fc"]),
        r"c_attn|c_fc",
    ),
    "vectors for modules the config does not target": (
        lambda p: edit_config(save_adapter(p), target_modules=["q_proj"]),
        r"v_proj'.*does not adapt",
    ),
    "truncated weights": (lambda p: truncate(save_adapter(p)), WEIGHTS),
    "garbage weights": (lambda p: garbage(save_adapter(p)), WEIGHTS),
    "weights file without tensors": (lambda p: empty_header(save_adapter(p)), "no SVF vector"),
    "missing weights": (lambda p: (save_adapter(p) / WEIGHTS).unlink() or p, f"has no {WEIGHTS}"),
    "config not valid JSON": (lambda p: broken_config(save_adapter(p)), f"{CONFIG} .*not valid JSON"),
    "NaN vector": (lambda p: edit_weights(save_adapter(p), first_vector_to_nan), "NaN"),
    "tensor for a base weight": (lambda p: edit_weights(save_adapter(p), add_base_weight), "lm_head.weight"),
    "keep_base_weight=False and another base": (
        lambda p: save_adapter(p, make_tiny_llama(hidden=48), keep_base_weight=False),
        r"shape \(48,\)",
    ),
    "max_mult 'big'": (lambda p: edit_config(save_adapter(p), max_mult="big"), "max_mult"),
    "max_mult negative": (lambda p: edit_config(save_adapter(p), max_mult=-1.0), "max_mult"),
    "max_mult NaN": (lambda p: edit_config(save_adapter(p), max_mult=float("nan")), "max_mult"),
    "init_noise_std negative": (
        lambda p: edit_config(save_adapter(p), init_noise_std=-0.5),
        "init_noise_std",
    ),
    "target_modules 123": (lambda p: edit_config(save_adapter(p), target_modules=123), "target_modules"),
    "target_modules [1, 2]": (
        lambda p: edit_config(save_adapter(p), target_modules=[1, 2]),
        "target_modules",
    ),
    "factors_dtype int8": (lambda p: edit_config(save_adapter(p), factors_dtype="int8"), "factors_dtype"),
    "unknown parameterization": (
        lambda p: edit_config(save_adapter(p), parameterization="cubic"),
        "parameterization",
    ),
    "unknown forward_mode": (lambda p: edit_config(save_adapter(p), forward_mode="fast"), "forward_mode"),
    "svd_dtype float16": (lambda p: edit_config(save_adapter(p), svd_dtype="float16"), "svd_dtype"),
    "keep_base_weight 'no'": (
        lambda p: edit_config(save_adapter(p), keep_base_weight="no"),
        "keep_base_weight",
    ),
    "negative layer index": (
        lambda p: edit_config(save_adapter(p), layers_to_transform=[-1], layers_pattern="layers"),
        "layers_to_transform",
    ),
}


def model_state(model: torch.nn.Module, input_ids: torch.Tensor) -> dict:
    """Everything a load may change, as plain values to compare."""
    with torch.no_grad():
        logits = model(input_ids).logits
    return {
        "modules": [(name, type(module)) for name, module in model.named_modules()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "logits": logits,
        "peft_config": sorted(getattr(model, "peft_config", {})),
        "active": getattr(model, "active_adapters", None),
        "training": [m.training for m in model.modules()],
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, tensor in before["tensors"].items():
        assert torch.equal(after["tensors"][key], tensor), key
    assert after["requires_grad"] == before["requires_grad"]
    assert torch.equal(after["logits"], before["logits"])
    assert after["peft_config"] == before["peft_config"]
    assert after["active"] == before["active"]
    assert after["training"] == before["training"]


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_failed_from_pretrained_leaves_the_plain_model_bit_identical(case, tmp_path, input_ids):
    make, message = BAD_ADAPTERS[case]
    bad = make(tmp_path / "bad")
    model = make_tiny_llama()
    before = model_state(model, input_ids)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        PeftModel.from_pretrained(model, str(bad))
    assert_unchanged(before, model_state(model, input_ids))
    assert not hasattr(model, "peft_config")


# Beside a first adapter that keeps W, a second one that frees it conflicts with the shared decomposition.
SECOND_ADAPTER_MESSAGES = {"keep_base_weight=False and another base": "keep_base_weight=False .* conflicts"}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_failed_load_adapter_leaves_the_peft_model_bit_identical(case, tmp_path, input_ids):
    make, message = BAD_ADAPTERS[case]
    message = SECOND_ADAPTER_MESSAGES.get(case, message)
    bad = make(tmp_path / "bad")
    good = save_adapter(tmp_path / "good", target_modules=["q_proj", "o_proj"])
    model = PeftModel.from_pretrained(make_tiny_llama(), good, adapter_name="math", is_trainable=True)
    before = model_state(model, input_ids)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        model.load_adapter(str(bad), adapter_name="code")
    assert_unchanged(before, model_state(model, input_ids))
    # Still a working PeftModel: the good adapter loads as a second one, as it would have before.
    model.load_adapter(good, adapter_name="code")
    model.set_adapter("code")
    reference = PeftModel.from_pretrained(make_tiny_llama(), good)
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reference(input_ids).logits)


def test_failed_injection_of_get_peft_model_is_undone(input_ids):
    """An unsupported module among the targets fails after the supported ones were wrapped: undo those."""
    model = make_tiny_llama()
    before = model_state(model, input_ids)
    # model.norm comes after every layer's q_proj and v_proj in the module order
    with pytest.raises(ValueError, match=r"'model.norm'.*LlamaRMSNorm"):
        get_peft_model(model, SVFConfig(target_modules=["q_proj", "v_proj", "norm"]))
    assert_unchanged(before, model_state(model, input_ids))


def test_a_good_load_after_the_rollback_still_matches_a_fresh_load(tmp_path, input_ids):
    bad = save_adapter(tmp_path / "bad", make_tiny_llama(hidden=48))
    good = save_adapter(tmp_path / "good")
    model = make_tiny_llama()
    with pytest.raises(ValueError):
        PeftModel.from_pretrained(model, str(bad))
    loaded = PeftModel.from_pretrained(model, good)
    reference = PeftModel.from_pretrained(make_tiny_llama(), good)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, reference(input_ids).logits)


def test_a_hub_repo_with_only_pickled_weights_is_refused_before_unpickling(tmp_path, monkeypatch):
    """Where PEFT would fall back to a Hub repo's ``adapter_model.bin``, an SVF load refuses before torch.load."""
    from peft.utils import save_and_load

    from peft_svf.svf.model import _refusing_downloaded_pickles

    folder = pickled_weights_only(save_adapter(tmp_path / "repo"))
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    with _refusing_downloaded_pickles("user/repo"), pytest.raises(ValueError, match=r"Refusing.*user/repo"):
        save_and_load.load_peft_weights(str(folder), device="cpu")
    assert unpickled == []
    assert save_and_load.torch_load.__name__ == "torch_load"  # PEFT's own function is back afterwards


def test_a_local_pickled_adapter_still_loads_with_a_warning(tmp_path, input_ids):
    """PEFT's ``save_pretrained(safe_serialization=False)`` round trip (its own suite tests it) keeps working."""
    folder = save_adapter(tmp_path / "a")
    reference = PeftModel.from_pretrained(make_tiny_llama(), folder)
    pickled_weights_only(folder)
    with pytest.warns(UserWarning, match="a pickle"):
        loaded = PeftModel.from_pretrained(make_tiny_llama(), folder)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, reference(input_ids).logits)


# -- part 4: cache settings belong to this machine ------------------------------------------------------------
def test_saved_config_has_no_local_cache_settings(tmp_path):
    model = get_peft_model(
        make_tiny_llama(),
        SVFConfig(target_modules=TARGETS, svd_cache=False, svd_cache_dir=str(tmp_path / "c")),
    )
    model.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / CONFIG).read_text())
    assert saved["peft_type"] == "SVF"
    assert not set(LOCAL_FIELDS) & set(saved)
    assert not (tmp_path / "c").exists()  # svd_cache=False: nothing written there either


@pytest.mark.parametrize("planted", ["/etc", "../../x", "outside"])
def test_a_downloaded_config_cannot_choose_where_the_svd_cache_is(planted, tmp_path, monkeypatch, input_ids):
    """A malicious adapter_config.json naming a cache folder: SVF neither reads nor writes there."""
    adapter = save_adapter(tmp_path / "adapter")
    work = tmp_path / "work" / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # "../../x" names tmp_path/work/x
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "marker").write_text("untouched")
    edit_config(adapter, svd_cache_dir=str(outside) if planted == "outside" else planted, svd_cache=True)
    used_dirs = []
    decompose = layer_module.decompose

    def spy(matrix, svd_dtype, cache_dir=None, use_cache=True):
        used_dirs.append(cache_dir)
        return decompose(matrix, svd_dtype, cache_dir, use_cache)

    monkeypatch.setattr(layer_module, "decompose", spy)
    with pytest.warns(UserWarning, match="svd_cache_dir"):
        model = PeftModel.from_pretrained(make_tiny_llama(), adapter)
    assert model.peft_config["default"].svd_cache_dir is None
    assert used_dirs and set(used_dirs) == {None}  # every decomposition used this machine's default cache
    assert sorted(p.name for p in outside.iterdir()) == ["marker"]
    assert not (tmp_path / "work" / "x").exists()
    reference = PeftModel.from_pretrained(make_tiny_llama(), adapter)
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reference(input_ids).logits)


LOADERS = {
    "SVFConfig.from_pretrained": lambda path: SVFConfig.from_pretrained(str(path)),
    "PeftConfig.from_pretrained": lambda path: PeftConfig.from_pretrained(str(path)),
    "SVFConfig.from_peft_type": lambda path: SVFConfig.from_peft_type(
        **json.loads((path / CONFIG).read_text())
    ),
    "SVFConfig(**json)": lambda path: SVFConfig(**json.loads((path / CONFIG).read_text())),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_way_of_reading_a_saved_config_ignores_its_cache_settings(loader, tmp_path):
    adapter = edit_config(save_adapter(tmp_path / "a"), svd_cache=False, svd_cache_dir="/etc")
    with pytest.warns(UserWarning, match="svd_cache"):
        loaded = LOADERS[loader](adapter)
    assert isinstance(loaded, SVFConfig)
    assert loaded.svd_cache is True and loaded.svd_cache_dir is None
    assert loaded.target_modules == set(TARGETS)  # the adapter's own settings are read as saved


def test_a_users_own_config_keeps_its_cache_settings(tmp_path):
    mine = SVFConfig(svd_cache=False, svd_cache_dir=str(tmp_path / "mine"))
    assert (mine.svd_cache, mine.svd_cache_dir) == (False, str(tmp_path / "mine"))


def test_pushed_adapter_config_has_no_local_cache_settings(tmp_path, monkeypatch):
    """Both push paths: a folder whose config names a cache folder, and a PeftModel with one set."""
    uploaded = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, folder_path, **kwargs):
        uploaded.append(json.loads((Path(folder_path) / CONFIG).read_text()))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    folder = edit_config(save_adapter(tmp_path / "a"), svd_cache_dir="/home/me/private", svd_cache=False)
    push_expert_to_hub(folder, "org/a")
    config = SVFConfig(target_modules=TARGETS, svd_cache_dir=str(tmp_path / "mine"))
    push_expert_to_hub(get_peft_model(make_tiny_llama(), config), "org/b")
    assert len(uploaded) == 2
    for saved in uploaded:
        assert saved["peft_type"] == "SVF" and not set(LOCAL_FIELDS) & set(saved)
    assert (
        json.loads((folder / CONFIG).read_text())["svd_cache_dir"] == "/home/me/private"
    )  # user's copy kept
