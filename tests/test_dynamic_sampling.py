"""Dynamic sampling as a switch of the run (``rollout.dynamic_sampling``): golden behaviour with a
scripted sampler, the prompt accounting through the data module, and composition with estimators."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer

from ibpo_lightning.data import RLDataModule
from ibpo_lightning.estimators import GRPO, IBPO
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.training import MemoryConfig
from ibpo_lightning.rollout import HFEngine, RolloutCallback
from ibpo_lightning.rollout.dynamic import DynamicSampling, add_groups
from ibpo_lightning.rollout.engine import Sample
from ibpo_lightning.tasks.base import Problem
from ibpo_lightning.types import RolloutBatch
from tests.helpers import LastRollout, ParityTask, adamw


class ScriptedSampler:
    """Sample j of a prompt is the text '<prompt id> <j>'; records the kind of every call."""

    group_size, max_new_tokens = 4, 8

    def __init__(self):
        self.kinds: list[str] = []

    def encode(self, text, system_prompt=None):
        return [len(text)]

    def generate(self, prompts, n, kind="fresh", **kw):
        self.kinds.append(kind)
        return [[Sample([p[0], j], [-1.0, -1.0], f"{p[0]} {j}", True) for j in range(n)] for p in prompts]

    def answer(self, problems, prompts, n, kind="fresh", **kw):  # single-turn: one generate call
        return self.generate(prompts, n, kind=kind, **kw)


class ScriptedTask:
    """The answer says how a problem's samples score: 'mixed' alternates 1, 0; 'solved' 1; 'hard' 0."""

    system_prompt = None

    def score(self, texts, answers):
        rule = {"mixed": lambda j: float(j % 2 == 0), "solved": lambda j: 1.0, "hard": lambda j: 0.0}
        return [rule[a](int(t.split()[1])) for t, a in zip(texts, answers)]


def problem(kind: str, k: int) -> Problem:
    return Problem(prompt=f"{kind} problem number {k}", answer=kind)


def scripted_batch(problems, sampler, task) -> RolloutBatch:
    batch = RolloutBatch([], policy_version=0)
    add_groups(batch, problems, sampler, task)
    sampler.kinds.clear()
    return batch


def test_refills_until_every_group_has_reward_variance():
    sampler, task = ScriptedSampler(), ScriptedTask()
    batch = scripted_batch([problem("hard", 0), problem("mixed", 0), problem("solved", 0)], sampler, task)
    source = iter([problem("solved", 1), problem("mixed", 1), problem("hard", 1), problem("mixed", 2)])
    drawn = []
    stats = DynamicSampling().fill(batch, sampler, task, lambda k: drawn.append(k) or [next(source) for _ in range(k)])
    # 1 varied group of 3: draw 2 (solved, mixed) -> 2 varied; draw 1 (hard) -> 2; draw 1 (mixed) -> 3
    assert drawn == [2, 1, 1]
    assert stats == {"dynamic/groups_drawn": 7.0, "dynamic/groups_kept": 3.0, "dynamic/rounds": 3.0}
    assert batch.problems == ["mixed problem number 0", "mixed problem number 1", "mixed problem number 2"]
    assert [t.group for t in batch.trajectories] == [0] * 4 + [1] * 4 + [2] * 4
    assert [t.reward for t in batch.trajectories] == [1.0, 0.0, 1.0, 0.0] * 3
    assert sampler.kinds == ["resample"] * 3  # every refill is counted as resampled tokens
    batch.collate(pad_id=0)
    assert batch.rewards.shape == (12,) and batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_the_round_cap_keeps_what_it_has():
    sampler, task = ScriptedSampler(), ScriptedTask()
    capped = DynamicSampling(max_rounds=1, oversample=2)
    batch = scripted_batch([problem("hard", 0), problem("mixed", 0), problem("solved", 0)], sampler, task)
    stats = capped.fill(batch, sampler, task, lambda k: [problem("hard", 9)] * k)
    assert stats["dynamic/groups_drawn"] == 3 + 4 and stats["dynamic/groups_kept"] == 1.0
    assert batch.problems == ["mixed problem number 0"] and len(batch.trajectories) == 4
    # no group with variance at all: the original groups are kept (the step trains on nothing)
    none = scripted_batch([problem("hard", 0), problem("solved", 0)], sampler, task)
    stats = capped.fill(none, sampler, task, lambda k: [problem("hard", 9)] * k)
    assert stats["dynamic/groups_kept"] == 0.0 and none.problems == ["hard problem number 0", "solved problem number 0"]


def test_ranks_agree_on_the_rounds():
    """A rank with every group varied still draws what the neediest rank draws (the shared prompt
    order must advance alike on every rank) but samples nothing."""
    sampler, task = ScriptedSampler(), ScriptedTask()
    batch = scripted_batch([problem("mixed", 0), problem("mixed", 1)], sampler, task)
    drawn = []
    other_rank_missing = iter([2, 1, 0])
    stats = DynamicSampling().fill(batch, sampler, task, lambda k: drawn.append(k) or [problem("hard", 5)] * k,
                                   most=lambda n: max(n, next(other_rank_missing)))
    assert drawn == [2, 1] and stats["dynamic/rounds"] == 2.0
    assert sampler.kinds == [] and len(batch.problems) == 2  # nothing sampled here


@pytest.mark.parametrize("bad", [{"max_rounds": -1}, {"oversample": 0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=f"rollout.dynamic_sampling.{next(iter(bad))}"):
        DynamicSampling(**bad)


@pytest.mark.parametrize("estimator", [GRPO, lambda: IBPO(n_refs=1)], ids=["grpo", "ibpo"])
def test_every_estimator_trains_on_varied_groups_drawn_from_the_prompt_order(tmp_path, estimator):
    module = PolicyModule(model="tiny-random-llama", optimizer=adamw(1e-3), memory=MemoryConfig(micro_batch_size=8))
    data = RLDataModule(ParityTask(num_train=32, num_heldout=4), prompts_per_step=2, steps=2)
    last = LastRollout()
    rollout = RolloutCallback(HFEngine(), group_size=4, max_new_tokens=6, dynamic_sampling=DynamicSampling(8))
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path, callbacks=[rollout, estimator(), last])
    trainer.fit(module, data)
    batch, metrics = last.batch, trainer.callback_metrics
    drawn = int(metrics["dynamic/groups_drawn"])
    assert float(metrics["dynamic/groups_kept"]) == 2.0, "ParityTask gives a random model reward variance"
    # both steps' problems, refills included, came from the data module's order
    assert data.order.epoch * data.order.size + data.order.offset >= 2 + drawn
    fresh = batch.fresh_groups()
    assert sorted(fresh) == [0, 1] and len(batch.problems) == 2
    for rows in fresh.values():
        rewards = [batch.trajectories[i].reward for i in rows]
        assert len(rewards) == 4 and max(rewards) > min(rewards)
    assert batch.advantages.abs().sum() > 0
    if drawn > 2:
        assert float(metrics["tokens/resample"]) > 0
