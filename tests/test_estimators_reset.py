"""SRPO and RRPO: golden advantages, zero gradient on the shared prefix, plan() with a scripted
sampler and with the real tiny engine, and a 2-step ``ibpo fit`` through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ibpo_lightning.cli import run_cli
from ibpo_lightning.estimators import RRPO, SRPO
from ibpo_lightning.estimators.functional import zscore_within
from ibpo_lightning.estimators.srpo import parse_step
from ibpo_lightning.losses import PolicyLoss
from ibpo_lightning.models import load_policy
from ibpo_lightning.rollout import HFEngine, Sampler
from ibpo_lightning.rollout.engine import Sample
from ibpo_lightning.tasks import Problem
from ibpo_lightning.types import Kind, RolloutBatch
from tests.helpers import ParityTask, batch_of, traj

ROOT = Path(__file__).parents[1]
VOCAB = {0: "", 1: "q", 2: "?", 5: "x", 6: "</thought>", 7: "y", 8: "\n", 9: "ok", 10: "no"}


class FakeTokenizer:
    """Each id is one word of ``VOCAB``; text is their concatenation."""

    pad_token_id = 0

    def convert_ids_to_tokens(self, ids):
        return [VOCAB[i] for i in ids]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(VOCAB[i] for i in ids)


class FakeRollout(Sampler):
    """A scripted sampler (the ``Sampler`` interface, its own ``generate``); it records every call.

    ``replies[kind]`` is a list of token-id lists handed out in turn; localisation answers are
    the text ``localisation``.
    """

    def __init__(self, replies=None, localisation="\\boxed{2}", max_new_tokens=8):
        self.tokenizer, self.max_new_tokens, self.environment = FakeTokenizer(), max_new_tokens, None
        self.replies, self.localisation = replies or {}, localisation
        self.calls, self.encoded, self.handed = [], [], 0

    def encode(self, text, system_prompt=None):
        self.encoded.append(text)
        return [1, 2]

    def generate(self, prompts, n, *, temperature=None, max_new_tokens=None, kind="fresh"):
        self.calls.append(dict(prompts=prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens, kind=kind))
        out = []
        for _ in prompts:
            group = []
            for _ in range(n):
                if kind == "localisation":
                    group.append(Sample([9], [-0.1], self.localisation, True))
                    continue
                ids = self.replies[kind][self.handed % len(self.replies[kind])]
                self.handed += 1
                group.append(Sample(list(ids), [-0.5] * len(ids), "".join(VOCAB[i] for i in ids), True))
            out.append(group)
        return out


class FakeTask:
    system_prompt = None

    def score(self, completions, answers):
        return [1.0 if "ok" in c else 0.0 for c in completions]


def raw_batch(trajs, n_groups=1) -> RolloutBatch:
    return RolloutBatch(list(trajs), policy_version=0, groups=[Problem(f"problem {g}", "1") for g in range(n_groups)])


def reset_row(parent, group, reward, response=(5, 6, 7), prefix_len=1):
    return traj(group, reward, response, kind=Kind.RESET_SUFFIX, parent=parent, prefix_len=prefix_len)


# -- assign: golden values ----------------------------------------------------------------------
def test_zscore_within_uses_population_std_and_zeroes_uniform_groups():
    values = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 3.0])
    ids = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    expected = [1.0, -1.0, 0.75 / math.sqrt(0.1875), -0.25 / math.sqrt(0.1875), -0.25 / math.sqrt(0.1875),
                -0.25 / math.sqrt(0.1875), 0.0]
    assert zscore_within(values, ids).tolist() == pytest.approx(expected, rel=1e-6)
    assert torch.count_nonzero(zscore_within(torch.ones(4), torch.zeros(4, dtype=torch.long))) == 0


@pytest.mark.parametrize("cls", [SRPO, RRPO])
def test_fresh_and_reset_rows_normalised_separately_golden(cls):
    # group 0: fresh [right, wrong parent (not trained), wrong]; 4 resets of row 1 after 1 token
    # group 1: fresh [right, right] (uniform, no resets)
    trajs = [traj(0, 1.0), traj(0, 0.0, trained=False), traj(0, 0.0),
             reset_row(1, 0, 1.0), reset_row(1, 0, 0.0), reset_row(1, 0, 0.0), reset_row(1, 0, 0.0),
             traj(1, 1.0), traj(1, 1.0)]
    batch = batch_of(trajs)
    adv, weights = cls().assign(batch)
    g2 = [1.7320508, -0.5773503, -0.5773503, -0.5773503]  # (r - 0.25) / sqrt(0.1875)
    assert adv[:, 4].tolist() == pytest.approx([1.0, 0.0, -1.0, *g2, 0.0, 0.0], abs=1e-6)
    # the reset rows' first response token is the shared prefix: no weight, no advantage
    assert torch.all(weights[3:7, 2] == 0) and torch.all(adv[3:7, 2] == 0)
    assert adv[3, 2:5].tolist() == pytest.approx([0.0, g2[0], g2[0]], abs=1e-6)
    assert torch.all(weights[1] == 0) and torch.all(adv[1] == 0)  # the parent is not trained on
    assert torch.equal(weights[0], batch.response_mask[0])


def test_groups_without_resets_are_plain_population_grpo_and_uniform_subgroups_are_zero():
    adv, _ = SRPO().assign(batch_of([traj(0, 1.0), traj(0, 0.0), traj(0, 0.0), traj(0, 0.0)]))
    assert adv[:, 2].tolist() == pytest.approx([0.75 / math.sqrt(0.1875)] + [-0.25 / math.sqrt(0.1875)] * 3, rel=1e-6)
    uniform = [traj(0, 0.0), traj(0, 0.0, trained=False), traj(0, 0.0)] + [reset_row(1, 0, 0.0)] * 4
    assert torch.count_nonzero(SRPO().assign(batch_of(uniform))[0]) == 0
    # uniform resets but informative fresh rows: only G1 gets credit
    mixed = [traj(0, 1.0), traj(0, 0.0, trained=False), traj(0, 0.0)] + [reset_row(1, 0, 1.0)] * 4
    adv, _ = SRPO().assign(batch_of(mixed))
    assert torch.count_nonzero(adv[3:]) == 0 and adv[0, 2].item() == pytest.approx(1.0)


@pytest.mark.parametrize("loss", [PolicyLoss(ratio="none"), PolicyLoss(ratio="token", dual_clip=3.0),
                                  PolicyLoss(ratio="sequence", kl_coef=0.1, aggregation="token_mean")],
                         ids=["reinforce", "clip", "sequence+kl"])
def test_shared_prefix_gets_exactly_zero_gradient(loss):
    trajs = [traj(0, 1.0, (5, 6, 7, 8)), traj(0, 0.0, (5, 6, 9, 9), trained=False), traj(0, 0.0, (5, 9, 9, 9)),
             reset_row(1, 0, 1.0, (5, 6, 7, 8), prefix_len=2), reset_row(1, 0, 0.0, (5, 6, 8, 8), prefix_len=2)]
    batch = batch_of(trajs)
    adv, weights = SRPO().assign(batch)
    torch.manual_seed(0)
    logits = torch.randn(*batch.input_ids.shape, 12, requires_grad=True)  # distribution of the token at t
    logp = logits.log_softmax(-1).gather(-1, batch.input_ids.unsqueeze(-1)).squeeze(-1)
    old = (logp.detach() + 0.3 * torch.randn_like(logp)) * batch.response_mask
    ref = logp.detach() - 0.2
    out, _ = loss(logp, old, adv, weights, loss.normaliser(weights), ref)
    out.backward()
    prefix = logits.grad[3:5, 2:4]  # prompt is 2 tokens; the resets share 2 response tokens
    assert torch.count_nonzero(prefix) == 0 and prefix.abs().max().item() == 0.0
    assert torch.count_nonzero(logits.grad[3:5, 4:6]) > 0  # the suffix does learn
    assert torch.count_nonzero(logits.grad[1]) == 0  # nor does the untrained parent


def test_parse_step_is_robust():
    assert parse_step("The error is here.\n\\boxed{3}") == 3
    assert parse_step("Step 2 looks fine, but \\boxed{Step 4}") == 4
    assert parse_step("\\boxed{ thought #5 }") == 5
    assert parse_step("I think the mistake is in step 6.") == 6
    assert parse_step(" 7. ") == 7
    assert parse_step("no idea, 12 apples") is None
    assert parse_step("\\boxed{x}") is None


def test_constructor_arguments_are_validated():
    with pytest.raises(ValueError, match="n_resets"):
        RRPO(n_resets=0)
    with pytest.raises(ValueError, match="delimiter"):
        SRPO(delimiter="")
    with pytest.raises(ValueError, match="localisation_prompt"):
        SRPO(localisation_prompt="{problem} without the steps")
    with pytest.raises(ValueError, match="fallback"):
        SRPO(fallback="middle")


# -- plan with a scripted sampler -----------------------------------------------------------------
def three_thought_group():
    """Group 0: a right answer and a wrong one of three thoughts x</thought> y</thought> x."""
    return [traj(0, 1.0, (9,)), traj(0, 0.0, (5, 6, 7, 6, 5)), traj(0, 0.0, (10,))]


def test_srpo_plan_localises_then_resets_from_the_named_thought():
    rollout = FakeRollout({"reset_suffix": [[9], [10]]}, localisation="so \\boxed{2}")
    batch = raw_batch(three_thought_group())
    SRPO(n_resets=4).plan(batch, rollout, FakeTask())
    assert [c["kind"] for c in rollout.calls] == ["localisation", "reset_suffix"]
    loc, suffix = rollout.calls
    assert loc["temperature"] == 0.3 and loc["max_new_tokens"] == 4096
    assert "Step 1: x</thought>\nStep 2: y</thought>\nStep 3: x" in rollout.encoded[0]
    assert "problem 0" in rollout.encoded[0]
    parent = batch.trajectories[1]  # the first wrong row
    assert parent.step_boundaries == (2, 4) and not parent.trained
    # thought 2 is wrong: reset after thought 1, i.e. after 2 tokens; budget 8 - 2
    assert suffix["prompts"] == [parent.prompt_ids + [5, 6]] and suffix["n"] == 4 and suffix["max_new_tokens"] == 6
    resets = batch.trajectories[3:]
    assert [t.kind for t in resets] == [Kind.RESET_SUFFIX] * 4
    assert all(t.parent == 1 and t.prefix_len == 2 and t.group == 0 and t.trained for t in resets)
    assert [t.response_ids for t in resets] == [[5, 6, 9], [5, 6, 10]] * 2
    assert resets[0].logprobs == parent.logprobs[:2] + [-0.5]
    assert [t.reward for t in resets] == [1.0, 0.0, 1.0, 0.0]
    assert batch.stats["srpo/resets"] == 1 and batch.stats["srpo/localisation_parsed"] == 1.0
    assert batch.stats["srpo/suffix_accuracy"] == 0.5
    batch.collate(0)
    assert batch.response_mask[3, 2:4].tolist() == [0.0, 0.0] and batch.response_mask[3, 4].item() == 1.0


@pytest.mark.parametrize("answer, fallback, offset, cut", [
    ("\\boxed{3}", "random", 0, 4), ("\\boxed{3}", "random", 1, 2), ("\\boxed{9}", "first", 0, 4),
    ("gibberish", "first", 0, 0), ("gibberish", "last", 0, 4), ("\\boxed{1}", "last", 2, 0)])
def test_srpo_reset_point_clamping_fallback_and_offset(answer, fallback, offset, cut):
    rollout = FakeRollout({"reset_suffix": [[9]]}, localisation=answer)
    batch = raw_batch(three_thought_group())
    SRPO(n_resets=1, fallback=fallback, reset_offset=offset).plan(batch, rollout, FakeTask())
    assert batch.trajectories[3].prefix_len == cut


def test_rrpo_draws_seeded_uniform_reset_points_without_a_localisation_call():
    def cuts(seed, draws=60):
        rollout = FakeRollout({"reset_suffix": [[9]]})
        rrpo, out = RRPO(n_resets=1, seed=seed), []
        for step in range(draws):
            batch = raw_batch(three_thought_group())
            batch.seed = step  # each step's own seed (the sampler's): the draws are a function of it
            rrpo.plan(batch, rollout, FakeTask())
            out.append(batch.trajectories[3].prefix_len)
        assert {c["kind"] for c in rollout.calls} == {"reset_suffix"}
        return out

    assert cuts(0) == cuts(0) and cuts(0) != cuts(1)
    assert set(cuts(0)) == {0, 2, 4}  # thoughts 1, 2, 3 each reached


def test_groups_without_a_wrong_sample_are_not_reset():
    rollout = FakeRollout({"reset_suffix": [[9]]})
    batch = raw_batch([traj(0, 1.0, (9,)), traj(0, 1.0, (9,)), traj(1, 0.0, (5, 6, 5)), traj(1, 1.0, (9,))], 2)
    RRPO(n_resets=2).plan(batch, rollout, FakeTask())
    assert [t.parent for t in batch.trajectories[4:]] == [2, 2]
    assert all(t.trained for t in batch.trajectories[:2])
    single = raw_batch([traj(0, 1.0, (9,)), traj(0, 1.0, (9,))])
    SRPO().plan(single, FakeRollout(), FakeTask())
    assert len(single) == 2 and single.stats["srpo/resets"] == 0


# -- plan with the real tiny engine ----------------------------------------------------------------
def tiny_rollout(max_new_tokens=8):
    model, tok = load_policy("tiny-random-llama")
    sampler = Sampler(HFEngine(), group_size=4, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=0)
    sampler.bind(model, tok, version=0)
    return sampler


@pytest.mark.parametrize("cls", [SRPO, RRPO])
def test_plan_on_the_tiny_engine_links_resets_and_counts_their_tokens(cls):
    torch.manual_seed(0)
    rollout, task = tiny_rollout(), ParityTask(num_train=8, num_heldout=2)
    extra = {"localisation_max_new_tokens": 6} if cls is SRPO else {}
    estimator = cls(n_resets=3, delimiter=" ", **extra)
    batch = rollout.sample_groups(task.train_problems()[:3], task.system_prompt)
    for t, r in zip(batch.trajectories, task.score([t.response_text for t in batch.trajectories], [""] * len(batch))):
        t.reward = r
    estimator.plan(batch, rollout, task)
    resets = [t for t in batch.trajectories if t.kind == Kind.RESET_SUFFIX]
    parents = {t.parent for t in resets}
    assert resets and len(resets) == 3 * len(parents) == 3 * batch.stats[f"{estimator.name}/resets"]
    for t in resets:
        p = batch.trajectories[t.parent]
        assert p.reward < 1 and not p.trained and t.prefix_len in (0, *p.step_boundaries)
        assert t.response_ids[: t.prefix_len] == p.response_ids[: t.prefix_len]
        assert len(t.response_ids) <= rollout.max_new_tokens
        assert t.reward == task.score([t.response_text], [""])[0]
    assert rollout.tokens_by_kind["reset_suffix"] == sum(len(t.response_ids) - t.prefix_len for t in resets)
    if cls is SRPO and any(len(batch.trajectories[i].step_boundaries) for i in parents):
        assert 0 < rollout.tokens_by_kind["localisation"] <= 6 * len(parents)
    batch.collate(rollout.tokenizer.pad_token_id)
    adv, weights = estimator.assign(batch)
    for i, t in enumerate(batch.trajectories):
        start = len(t.prompt_ids)
        assert torch.all(weights[i, : start + t.prefix_len] == 0) and torch.all(adv[i, : start + t.prefix_len] == 0)


# -- the real CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["srpo", "rrpo"])
def test_two_step_fit_through_the_cli(tmp_path, name):
    cli = run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / f"configs/estimators/{name}.yaml"),
                   f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                   "--trainer.logger=false", "--estimator.init_args.delimiter= ",
                   *(["--estimator.init_args.localisation_max_new_tokens=8"] if name == "srpo" else [])])
    assert cli.model.policy_version == 2
    assert cli.model.loss.ratio == "none"
    metrics = cli.trainer.callback_metrics
    assert metrics["tokens/fresh"] > 0 and metrics["tokens/reset_suffix"] > 0  # random model: always wrong
    assert metrics[f"{name}/resets"] > 0


def test_help_documents_the_shared_reset_arguments(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--estimator.help", "SRPO"])
    out = capsys.readouterr().out
    assert "suffix continuations sampled from the shared prefix" in out  # ResetEstimator's n_resets
    assert "sampling temperature of the localisation call" in out
