"""VinePPO and SPO: segmentation, golden Monte-Carlo step advantages, plan() with a scripted
sampler and with the real tiny engine, and a 2-step ``ibpo fit`` through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ibpo_lightning.cli import run_cli
from ibpo_lightning.estimators import SPO, VinePPO
from ibpo_lightning.estimators.functional import value_differences
from ibpo_lightning.estimators.segments import delimiter_ends, fixed_ends, thin
from ibpo_lightning.types import Kind
from tests.helpers import ParityTask, batch_of, traj
from tests.test_estimators_reset import FakeRollout, FakeTask, raw_batch, tiny_rollout

ROOT = Path(__file__).parents[1]


def probe(parent, group, reward, cut, response=(5, 6, 7, 8)):
    return traj(group, reward, response, kind=Kind.PROBE, parent=parent, prefix_len=cut, trained=False)


# -- segmentation -----------------------------------------------------------------------------------
def test_delimiter_ends_across_and_within_tokens():
    texts = ["a", "</", "thought", ">", "b", "</thought>", "c"]
    assert delimiter_ends(texts, "</thought>") == (4, 6)
    assert delimiter_ends(["x", "\n", "\n", "y"], "\n\n") == (3,)  # split over two tokens
    assert delimiter_ends(["x.\n\n", "y", ".\n\n"], "\n\n") == (1,)  # merged; the end is no boundary
    assert delimiter_ends(["\n\n\n\n", "y"], "\n\n") == (1,)  # two hits in one token: one boundary
    assert delimiter_ends(["x", "y"], "\n") == ()


def test_fixed_ends_and_thinning():
    assert fixed_ends(7, 3) == (3, 6) and fixed_ends(6, 3) == (3,) and fixed_ends(2, 3) == ()
    assert thin((1, 2, 3, 4, 5), 2) == (2, 4)
    assert thin((1, 2, 3, 4, 5), 0) == () and thin((1, 2), None) == (1, 2) and thin((1, 2), 5) == (1, 2)


def test_value_differences_golden():
    # V(s0) = 0.25, after token 2: 0.5, after token 3: 1.0, terminal reward 0
    out = value_differences([0.25, 0.5, 1.0, 0.0], (2, 3), 5)
    assert out.tolist() == pytest.approx([0.25, 0.25, 0.5, -1.0, -1.0])
    assert value_differences([0.5, 1.0], (), 3).tolist() == pytest.approx([0.5] * 3)
    with pytest.raises(ValueError, match="need 3 values"):
        value_differences([0.0, 1.0], (2,), 4)


# -- assign: golden values ----------------------------------------------------------------------------
def two_samples_with_probes():
    """Two 4-token samples cut after token 2; three probes per boundary, three of the prompt."""
    return [traj(0, 1.0, (5, 6, 7, 8), step_boundaries=(2,)), traj(0, 0.0, (5, 6, 9, 9), step_boundaries=(2,)),
            probe(0, 0, 1.0, 2), probe(0, 0, 0.0, 2), probe(0, 0, 1.0, 2),
            probe(1, 0, 1.0, 2), probe(1, 0, 1.0, 2), probe(1, 0, 1.0, 2),
            probe(-1, 0, 0.0, 0), probe(-1, 0, 1.0, 0), probe(-1, 0, 0.0, 0)]


def test_vineppo_step_advantages_golden():
    batch = batch_of(two_samples_with_probes())
    adv, weights = VinePPO(share_probes=False).assign(batch)
    # V0 = 1/3 (prompt probes); row 0: V1 = 2/3, R = 1; row 1: V1 = 1, R = 0
    assert adv[0, 2:6].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert adv[1, 2:6].tolist() == pytest.approx([2 / 3, 2 / 3, -1.0, -1.0])
    # both rows start 5, 6: one state, whose value pools the six probes (V1 = 5/6)
    pooled, _ = VinePPO().assign(batch)
    assert pooled[0, 2:6].tolist() == pytest.approx([1 / 2, 1 / 2, 1 / 6, 1 / 6])
    assert pooled[1, 2:6].tolist() == pytest.approx([1 / 2, 1 / 2, -5 / 6, -5 / 6])
    assert torch.count_nonzero(adv[2:]) == 0 and torch.count_nonzero(weights[2:]) == 0  # probes: values only
    assert torch.equal(weights[:2], batch.response_mask[:2]) and torch.all(adv[:, :2] == 0)


def test_spo_group_mean_start_and_probability_mask_golden():
    trajs = two_samples_with_probes()
    trajs[0].logprobs = [-1.0, -0.01, -1.0, -0.05]  # p = 0.99 and 0.95: no gradient under rho = 0.9
    batch = batch_of(trajs)
    adv, weights = SPO(share_probes=False).assign(batch)
    # V0 = mean fresh reward = 0.5; row 0: [2/3 - 0.5, 1 - 2/3]; row 1: [1 - 0.5, 0 - 1]
    assert adv[0, 2:6].tolist() == pytest.approx([1 / 6, 0.0, 1 / 3, 0.0])
    assert weights[0, 2:6].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert adv[1, 2:6].tolist() == pytest.approx([0.5, 0.5, -1.0, -1.0])
    no_mask, _ = SPO(prob_threshold=None, share_probes=False).assign(batch)
    assert no_mask[0, 2:6].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 3, 1 / 3])


def test_uniform_rewards_and_probes_give_zero_advantage():
    trajs = two_samples_with_probes()
    for t in trajs:
        t.reward = 0.0
    assert torch.count_nonzero(VinePPO().assign(batch_of(trajs))[0]) == 0
    assert torch.count_nonzero(SPO(prob_threshold=None).assign(batch_of(trajs[:2]))[0]) == 0  # no probes: R - mean
    # a uniform outcome with informative probes still credits steps (the method's point)
    trajs[3].reward = 1.0
    adv, _ = VinePPO(share_probes=False).assign(batch_of(trajs))
    assert adv[0, 2:6].tolist() == pytest.approx([1 / 3, 1 / 3, -1 / 3, -1 / 3])


def test_prompt_probes_are_required_for_probe_start_values():
    with pytest.raises(ValueError, match="no probes of its prompt"):
        VinePPO().assign(batch_of(two_samples_with_probes()[:8]))


def test_constructor_arguments_are_validated():
    for kwargs, field in [({"n_probes": 0}, "n_probes"), ({"segment_tokens": 0}, "segment_tokens"),
                          ({"delimiter": ""}, "delimiter"), ({"initial_value": "critic"}, "initial_value"),
                          ({"max_probes": -1}, "max_probes")]:
        with pytest.raises(ValueError, match=field):
            VinePPO(**kwargs)
    assert not VinePPO().group_relative and SPO().group_relative  # a group mean needs a group


# -- plan with a scripted sampler -------------------------------------------------------------------
def lines_batch():
    # "x\ny\nx" (boundaries 2, 4) and "ok" (none); group 1: "x\nok"
    return raw_batch([traj(0, 0.0, (5, 8, 7, 8, 5)), traj(0, 1.0, (9,)), traj(1, 1.0, (5, 8, 9))], 2)


def test_vineppo_plan_probes_every_boundary_and_each_prompt():
    rollout = FakeRollout({"probe": [[9], [10]]})
    batch = lines_batch()
    VinePPO(n_probes=2).plan(batch, rollout, FakeTask())
    assert {c["kind"] for c in rollout.calls} == {"probe"}
    assert sorted(c["max_new_tokens"] for c in rollout.calls) == [4, 6, 8]  # budget left after each prefix
    assert [t.step_boundaries for t in batch.trajectories[:3]] == [(2, 4), (), (2,)]
    probes = batch.trajectories[3:]
    assert all(t.kind == Kind.PROBE and not t.trained for t in probes)
    keys = sorted((t.parent, t.prefix_len, t.group) for t in probes)
    assert keys == sorted([(0, 2, 0)] * 2 + [(0, 4, 0)] * 2 + [(2, 2, 1)] * 2 + [(-1, 0, 0)] * 2 + [(-1, 0, 1)] * 2)
    for t in probes:
        src = batch.trajectories[t.parent if t.parent >= 0 else 0 if t.group == 0 else 2]
        assert t.response_ids[: t.prefix_len] == src.response_ids[: t.prefix_len]
        assert t.reward == (1.0 if 9 in t.response_ids else 0.0)
    assert batch.stats["vineppo/probes"] == 10 and batch.stats["vineppo/steps"] == pytest.approx(2.0)
    adv, _ = VinePPO(n_probes=2).assign(batch.collate(0))
    assert torch.isfinite(adv).all()


def test_probe_caps_merge_steps():
    batch = raw_batch([traj(0, 0.0, (5, 8, 5, 8, 5, 8, 5)), traj(0, 0.0, (5, 8, 5))])
    rows = [0, 1]
    tok = FakeRollout().tokenizer
    assert VinePPO().boundaries(batch, rows, tok) == {0: (2, 4, 6), 1: (2,)}
    assert VinePPO(max_steps=1).boundaries(batch, rows, tok) == {0: (4,), 1: (2,)}
    own = dict(n_probes=2, share_probes=False)
    assert VinePPO(**own, max_probes=6).boundaries(batch, rows, tok) == {0: (2, 6), 1: (2,)}  # 3 boundaries
    assert VinePPO(**own, max_probes=3).boundaries(batch, rows, tok) == {0: (), 1: ()}
    # shared: both rows start "x\n", so all four boundaries are 3 states, within a cap of 3 x 2 probes
    assert VinePPO(n_probes=2, max_probes=6).boundaries(batch, rows, tok) == {0: (2, 4, 6), 1: (2,)}
    assert VinePPO(n_probes=2, max_probes=4).boundaries(batch, rows, tok) == {0: (2, 6), 1: (2,)}
    rollout = FakeRollout({"probe": [[9]]})
    SPO(segment_tokens=3, n_probes=1).plan(batch, rollout, FakeTask())
    assert batch.trajectories[0].step_boundaries == (3, 6) and len(batch) == 2 + 2  # group mean: no prompt probes


def test_samples_with_equal_prefixes_share_the_probes_of_that_state():
    # group 0: "x\ny\nx" and "x\nok" agree up to their first boundary (2): one state, probed once
    def plan(share):
        batch = raw_batch([traj(0, 0.0, (5, 8, 7, 8, 5)), traj(0, 1.0, (5, 8, 9))])
        rollout = FakeRollout({"probe": [[9], [10], [10]]})  # rewards 1, 0, 0 in turn
        VinePPO(n_probes=3, share_probes=share).plan(batch, rollout, FakeTask())
        return batch
    batch = plan(True)
    probes = batch.trajectories[2:]
    assert sorted((t.parent, t.prefix_len) for t in probes) == [(-1, 0)] * 3 + [(0, 2)] * 3 + [(0, 4)] * 3
    assert batch.stats["vineppo/probes"] == 9 and batch.stats["vineppo/shared_boundaries"] == pytest.approx(1 / 3)
    adv, _ = VinePPO(n_probes=3).assign(batch.collate(0))
    # V0 = V(x\n) = V(x\ny\n) = 1/3; row 1 reads the state row 0 probed: [V1 - V0 | R - V1]
    assert adv[1, 2:5].tolist() == pytest.approx([0.0, 0.0, 2 / 3])
    assert adv[0, 2:7].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, -1 / 3])
    own = plan(False)
    assert own.stats["vineppo/probes"] == 12 and own.stats["vineppo/shared_boundaries"] == 0.0
    assert sorted({(t.parent, t.prefix_len) for t in own.trajectories[2:]}) == [(-1, 0), (0, 2), (0, 4), (1, 2)]
    # read without sharing, the shared plan leaves row 1's boundary unvalued: R - V0 on every token
    adv_own, _ = VinePPO(n_probes=3, share_probes=False).assign(batch_of(batch.trajectories))
    assert adv_own[1, 2:5].tolist() == pytest.approx([2 / 3] * 3)


# -- plan with the real tiny engine -----------------------------------------------------------------
@pytest.mark.parametrize("estimator", [VinePPO(n_probes=2, delimiter=" "), SPO(n_probes=2, segment_tokens=3)],
                         ids=["vineppo", "spo"])
def test_plan_on_the_tiny_engine_counts_probe_tokens(estimator):
    torch.manual_seed(0)
    rollout, task = tiny_rollout(), ParityTask(num_train=8, num_heldout=2)
    batch = rollout.sample_groups(task.train_problems()[:2], task.system_prompt)
    for t, r in zip(batch.trajectories, task.score([t.response_text for t in batch.trajectories], [""] * len(batch))):
        t.reward = r
    estimator.plan(batch, rollout, task)
    fresh = [t for t in batch.trajectories if t.kind == Kind.FRESH]
    probes = [t for t in batch.trajectories if t.kind == Kind.PROBE]
    expected = 2 * sum(len(t.step_boundaries) for t in fresh) + (2 * 2 if estimator.initial_value == "probes" else 0)
    assert probes and len(probes) == expected == batch.stats[f"{estimator.name}/probes"]
    for t in probes:
        src = batch.trajectories[t.parent] if t.parent >= 0 else None
        assert not t.trained and (src is None or t.prefix_len in src.step_boundaries)
        assert src is None or t.response_ids[: t.prefix_len] == src.response_ids[: t.prefix_len]
        assert len(t.response_ids) <= rollout.max_new_tokens
    assert rollout.tokens_by_kind["probe"] == sum(len(t.response_ids) - t.prefix_len for t in probes)
    adv, weights = estimator.assign(batch.collate(rollout.tokenizer.pad_token_id))
    assert torch.count_nonzero(weights[[i for i, t in enumerate(batch.trajectories) if t.kind == Kind.PROBE]]) == 0
    assert torch.isfinite(adv).all()


# -- the real CLI -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, extra", [
    ("vineppo", ["--estimator.init_args.delimiter= ", "--estimator.init_args.n_probes=2"]),
    ("spo", ["--estimator.init_args.segment_tokens=3", "--estimator.init_args.prob_threshold=1.0"])])
def test_two_step_fit_through_the_cli(tmp_path, name, extra):
    cli = run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / f"configs/estimators/{name}.yaml"),
                   f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                   "--trainer.logger=false", *extra])
    assert cli.model.policy_version == 2
    metrics = cli.trainer.callback_metrics
    assert metrics["tokens/fresh"] > 0 and metrics["tokens/probe"] > 0
    assert metrics[f"{name}/probes"] > 0


def test_a_delimiter_with_its_quotes_or_escapes_kept_literally_warns():
    """'"\\n"' from a CLI or a single-quoted yaml value is four characters that never match: say so."""
    import warnings

    from ibpo_lightning.estimators import ACPO, IBPO, SRPO, VinePPO

    for slip in ('"\n"', "\\n", "'\n\n'"):
        for make in (lambda d: SRPO(delimiter=d), lambda d: VinePPO(delimiter=d),
                     lambda d: IBPO(mask_granularity="step", step_delimiter=d), lambda d: ACPO(step_delimiter=d)):
            with pytest.warns(UserWarning, match="delimiter is .*write the characters themselves"):
                make(slip)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real characters, and SPO's fixed segments, pass in silence
        SRPO(delimiter="\n"), VinePPO(delimiter="\n\n"), ACPO(step_delimiter="</step>")
        IBPO(mask_granularity="step", step_delimiter="\n")
        VinePPO(delimiter="\\n", segment_tokens=8)
