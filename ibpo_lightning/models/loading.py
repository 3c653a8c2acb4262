"""Turn a model name or path into a loaded policy and tokenizer.

Run ``python -m ibpo_lightning.models.loading smollm2-135m-instruct`` to build a built-in
model into the cache ahead of time and print where it lives.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ibpo_lightning.models.attention import use_cpu_fp32_attention
from ibpo_lightning.models.builtin import (
    BUILTIN_MODELS,
    TINY_RANDOM_LLAMA,
    ensure_pad_token,
    random_llama,
)
from ibpo_lightning.models.cache import materialize

_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def _looks_like_path(name: str) -> bool:
    """True for strings meant as file-system paths rather than Hub ids like ``org/model``."""
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    starts = ("/", "./", "../", "~", ".\\", "..\\")
    return name.startswith(starts) or name in {".", ".."} or name.endswith(tuple(seps)) or (
        sum(name.count(s) for s in seps) > 1
    )


def _hub_snapshot(name: str) -> str:
    """Local directory of Hub repo `name` (downloaded unless offline); one clear error if not."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, allow_patterns=_HUB_FILES)
    except (OSError, ValueError) as err:  # offline miss, unknown repo, malformed id, no network
        raise FileNotFoundError(
            f"model {name!r} is neither a built-in name ({', '.join(sorted(BUILTIN_MODELS))}), "
            f"a local directory, nor a Hub id available offline ({type(err).__name__})"
        ) from err


def resolve_model_path(name_or_path: str) -> str:
    """Local directory holding `name_or_path`: a built-in name, a local directory or a Hub id.

    Built-in names are built into the cache on first use (see `ibpo_lightning.models.cache`).
    """
    if name_or_path in BUILTIN_MODELS:
        return str(materialize(name_or_path, BUILTIN_MODELS[name_or_path]))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    shown = repr(name_or_path) + (f" ({path})" if str(path) != name_or_path else "")
    if path.exists():
        raise NotADirectoryError(f"model path {shown} is not a directory")
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(f"model path {shown} does not exist")
    return _hub_snapshot(name_or_path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "tokenizer_config.json")


def check_model_dir(path: str) -> None:
    """Refuse, naming the file, a model directory that cannot load: no tokenizer files (which
    ``transformers`` reports as a missing sentencepiece or tiktoken), or a ``*.safetensors`` file
    whose header is cut or unreadable (reported by safetensors without its name)."""
    directory = Path(path)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"model directory {directory} has no tokenizer files (one of "
                                f"{', '.join(TOKENIZER_FILES)}): copy them from the base model, or save "
                                "the tokenizer there with tokenizer.save_pretrained")
    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with open(weights, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = f.read(size)
            if len(header) < size or size == 0:
                raise ValueError(f"header of {size} bytes, {len(header)} present")
            offsets = [v["data_offsets"][1] for k, v in json.loads(header).items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise ValueError(f"model weights {weights} are unreadable ({error}): the file is cut or not "
                             "safetensors; copy or export it again") from None
        if offsets and 8 + size + max(offsets) > weights.stat().st_size:
            raise ValueError(f"model weights {weights} are cut short: {weights.stat().st_size} bytes, the header "
                             f"describes {8 + size + max(offsets)}; copy or export it again")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of `name_or_path`, given a pad token (eos) if it has none."""
    path = resolve_model_path(name_or_path)
    check_model_dir(path)
    return ensure_pad_token(AutoTokenizer.from_pretrained(path))


def load_policy(
    name_or_path: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM in `dtype` and its tokenizer; the model is returned in eval mode.

    Its SDPA attention runs half precision in fp32 on CPU (``models.attention``: bf16 autocast
    would otherwise spend a third of a training step in the CPU's slow bf16 attention backward).
    """
    path = resolve_model_path(name_or_path)
    check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    use_cpu_fp32_attention(model)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def tiny_random_model(
    vocab_from: str | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny random fp32 Llama for fast tests, with a chat-template tokenizer.

    `vocab_from` names the model whose tokenizer (and vocabulary size) to use; by default
    SmolLM2's, taken from the cached ``tiny-random-llama`` built-in (49152 tokens, ChatML).
    """
    tokenizer = load_tokenizer(vocab_from or TINY_RANDOM_LLAMA)
    model = random_llama(
        tokenizer, num_layers, hidden_size, num_heads, num_kv_heads, intermediate_size, seed
    )
    return model, tokenizer


def prepare_models_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: build each named built-in model into the cache and print its path."""
    parser = argparse.ArgumentParser(description=prepare_models_main.__doc__)
    parser.add_argument("names", nargs="+", choices=sorted(BUILTIN_MODELS), metavar="NAME",
                        help=f"built-in model names: {', '.join(sorted(BUILTIN_MODELS))}")
    for name in parser.parse_args(argv).names:
        print(resolve_model_path(name))


if __name__ == "__main__":
    prepare_models_main()
