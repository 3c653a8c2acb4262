"""Model resolution, the built-in offline SmolLM2 and the tiny random Llama."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ibpo_lightning.models import (
    BUILTIN_MODELS,
    load_policy,
    prepare_models_main,
    resolve_model_path,
    tiny_random_model,
)
from ibpo_lightning.models.builtin import SMOLLM2, TINY_RANDOM_LLAMA
from ibpo_lightning.models.cache import BUILDS, CACHE_ENV, cache_dir, materialize

Policy = tuple[PreTrainedModel, PreTrainedTokenizerBase]


def _tied(model: PreTrainedModel) -> bool:
    out, inp = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    return out.data_ptr() == inp.data_ptr()


def _greedy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def smollm2() -> Policy:
    """SmolLM2 from the shared cache (converted from the GGUF on first use, ~30 s)."""
    return load_policy(SMOLLM2)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache root; reuses the shared SmolLM2 conversion (for its tokenizer) if present."""
    root = tmp_path_factory.mktemp("ibpo_cache")
    shared = cache_dir(SMOLLM2)
    if (shared / "config.json").is_file():
        os.symlink(shared, root / SMOLLM2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root))
        yield root


@pytest.mark.slow
def test_smollm2_converts_and_answers(smollm2: Policy) -> None:
    model, tok = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert cfg.tie_word_embeddings and _tied(model)
    assert not hasattr(cfg, "quantization_config")
    assert model.dtype == torch.float32
    assert tok.pad_token is not None and "<|im_start|>" in tok.chat_template
    assert "5" in _greedy(model, tok, "What is 2 + 3?")
    assert "Paris" in _greedy(model, tok, "What is the capital of France?")
    files = {p.name for p in Path(resolve_model_path(SMOLLM2)).iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= files


@pytest.mark.slow
def test_smollm2_second_load_uses_cache(smollm2: Policy) -> None:
    weights = Path(resolve_model_path(SMOLLM2)) / "model.safetensors"
    builds, mtime = BUILDS[SMOLLM2], weights.stat().st_mtime_ns
    model, _ = load_policy(SMOLLM2, dtype=torch.bfloat16)
    assert BUILDS[SMOLLM2] == builds
    assert weights.stat().st_mtime_ns == mtime
    assert model.dtype == torch.bfloat16 and _tied(model)


@pytest.mark.parametrize(
    "path", ["/no/such/no_such_model_dir", "./no_such_model_dir", "~/no_such_model_dir"]
)
def test_missing_path_names_it(path: str) -> None:
    with pytest.raises(FileNotFoundError, match=r"no_such_model_dir.*does not exist"):
        resolve_model_path(path)


def test_file_path_is_not_a_model_dir(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="model.gguf"):
        resolve_model_path(str(weights))


@pytest.mark.parametrize("name", ["smollm3-nonexistent", "no-such-org/no-such-model"])
def test_unknown_name_lists_builtins(name: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_model_path(name)
    message = str(info.value)
    assert repr(name) in message and "Hub id available offline" in message
    assert all(builtin in message for builtin in BUILTIN_MODELS)


def test_interrupted_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))

    def broken_build(dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize("half-built", broken_build)
    assert [p.name for p in tmp_path.iterdir()] == [".half-built.lock"]  # no entry, no temp dir

    def good_build(dest: Path) -> None:
        (dest / "config.json").write_text("{}")

    assert materialize("half-built", good_build) == tmp_path / "half-built"
    assert (tmp_path / "half-built" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".half-built.lock", "half-built"]


def test_tiny_random_llama_builds_and_runs(
    tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare_models_main([TINY_RANDOM_LLAMA])
    path = capsys.readouterr().out.strip()
    assert path == str(tiny_cache / TINY_RANDOM_LLAMA)
    assert resolve_model_path(path) == path  # a local directory resolves to itself
    model, tok = load_policy(TINY_RANDOM_LLAMA)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (2, 64, 49152)
    assert _tied(model) and tok.pad_token is not None and "<|im_start|>" in tok.chat_template
    batch = tok(["What is 2 + 3?", "Hi"], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 49152)
    assert torch.isfinite(logits).all()


def test_tiny_random_model_is_seeded(tiny_cache: Path) -> None:
    cached, _ = load_policy(TINY_RANDOM_LLAMA)
    same, _ = tiny_random_model(seed=0)
    other, _ = tiny_random_model(seed=1, num_layers=1)
    for name, weight in cached.state_dict().items():
        assert torch.equal(weight, same.state_dict()[name]), name
    assert not torch.equal(cached.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert other.config.num_hidden_layers == 1
