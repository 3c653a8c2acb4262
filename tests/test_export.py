"""Hugging Face export: the HFExport callback, scripts/export_hf.py, reload with transformers
(greedy output equal to the trainer's policy) and with vLLM (slow)."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ibpo_lightning.data import RLDataModule
from ibpo_lightning.training import MemoryConfig
from ibpo_lightning.estimators import GRPO
from ibpo_lightning.export import HFExport, policy_from_checkpoint, save_hf
from ibpo_lightning.models import load_policy
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.rollout import HFEngine, RolloutCallback, vllm_available
from tests.helpers import ParityTask, adamw

ROOT = Path(__file__).parents[1]
QUESTIONS = ["What is 3 + 4?", "Name a colour."]


def chat(tok, text):
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@torch.no_grad()
def greedy(model, tok, max_new_tokens=12):
    out = []
    for q in QUESTIONS:
        ids = torch.tensor([chat(tok, q)])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny policy after 2 RL steps at a large learning rate, its export and its checkpoint."""
    root = tmp_path_factory.mktemp("run")
    module = PolicyModule(model="tiny-random-llama", optimizer=adamw(1e-2), memory=MemoryConfig(micro_batch_size=8))
    data = RLDataModule(ParityTask(num_train=32, num_heldout=4), prompts_per_step=2, steps=2)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
                      callbacks=[RolloutCallback(HFEngine(), group_size=4, max_new_tokens=6), GRPO(), HFExport(),
                                 ModelCheckpoint(dirpath=root / "ckpt", save_last=True)])
    trainer.fit(module, data)
    return module, root / "export", root / "ckpt" / "last.ckpt"


def test_callback_writes_safetensors_config_and_tokenizer(trained):
    _, export, _ = trained
    names = {p.name for p in export.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert not any(n.endswith(".bin") for n in names)


def test_transformers_reload_gives_the_trained_policy_and_its_greedy_output(trained):
    module, export, _ = trained
    policy = module.policy.eval()
    reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(export)
    assert tok.pad_token is not None and tok.chat_template == module.tokenizer.chat_template
    trained_state = policy.state_dict()
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, trained_state[name]), name
    base, _ = load_policy("tiny-random-llama")
    assert not torch.equal(base.state_dict()["model.norm.weight"], trained_state["model.norm.weight"]), \
        "the run should have moved the weights"
    assert greedy(reloaded, tok) == greedy(policy, module.tokenizer)


def test_export_script_from_checkpoint_matches_the_callback(trained, tmp_path):
    _, export, ckpt = trained
    spec = importlib.util.spec_from_file_location("export_hf", ROOT / "scripts" / "export_hf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(ckpt), str(tmp_path / "out")])
    assert load_file(tmp_path / "out" / "model.safetensors").keys() == load_file(export / "model.safetensors").keys()
    for name, value in load_file(tmp_path / "out" / "model.safetensors").items():
        assert torch.equal(value, load_file(export / "model.safetensors")[name]), name


def test_bfloat16_export_leaves_the_policy_in_float32(trained, tmp_path):
    module, _, ckpt = trained
    policy, tok = policy_from_checkpoint(ckpt)
    save_hf(policy, tok, tmp_path / "bf16", dtype="bfloat16")
    assert next(policy.parameters()).dtype == torch.float32
    assert {v.dtype for v in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="export dtype"):
        HFExport(dtype="int8")
    with pytest.raises(ValueError, match="not a PolicyModule checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
        policy_from_checkpoint(tmp_path / "x.ckpt")


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")
def test_vllm_loads_an_export_and_matches_transformers_greedy(tmp_path):
    """SmolLM2 (the tiny model's head size is below what vLLM's CPU attention takes)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    policy, tok = load_policy("smollm2-135m-instruct")
    out = save_hf(policy, tok, tmp_path / "export")
    llm = LLM(model=str(out), dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=12)
    results = llm.generate([TokensPrompt(prompt_token_ids=chat(tok, q)) for q in QUESTIONS], params)
    assert [list(r.outputs[0].token_ids) for r in results] == greedy(policy, tok)
