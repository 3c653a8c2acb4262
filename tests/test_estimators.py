"""Golden values of the GRPO family and IBPO, computed by hand."""

import math

import pytest
import torch

from ibpo_lightning.estimators import GRPO, IBPO, RLOO
from ibpo_lightning.estimators.functional import leave_one_out, levenshtein_kept
from tests.helpers import batch_of, revision, traj


def row_adv(batch, adv):
    """Advantage of each row's first response token (prompts are 2 tokens)."""
    return adv[:, 2]


def test_grpo_golden_values():
    batch = batch_of([traj(0, 1.0), traj(0, 0.0), traj(0, 0.0), traj(0, 1.0), traj(1, 1.0), traj(1, 0.0)])
    adv, weights = GRPO().assign(batch)
    std0 = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    expected = [0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0, 0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)]
    assert row_adv(batch, adv).tolist() == pytest.approx(expected, rel=1e-5)
    # every response token carries the sequence advantage; prompt tokens none
    assert torch.equal(weights, batch.response_mask)
    assert torch.all(adv[:, :2] == 0)
    assert torch.allclose(adv[0, 2:5], torch.full((3,), expected[0]))


def test_dr_grpo_drops_the_std():
    batch = batch_of([traj(0, 1.0), traj(0, 0.0), traj(0, 0.0), traj(0, 0.0)])
    adv, _ = GRPO(normalize_std=False).assign(batch)
    assert row_adv(batch, adv).tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


@pytest.mark.parametrize("estimator", [GRPO(), GRPO(normalize_std=False), RLOO()])
def test_uniform_reward_groups_get_zero_advantage(estimator):
    batch = batch_of([traj(0, 1.0), traj(0, 1.0), traj(1, 0.0), traj(1, 0.0)])
    adv, _ = estimator.assign(batch)
    assert torch.count_nonzero(adv) == 0


def test_rloo_equals_scaled_centred_reward():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0])
    groups = torch.zeros(5, dtype=torch.long)
    g = 5
    assert torch.allclose(leave_one_out(rewards, groups), g / (g - 1) * (rewards - rewards.mean()))
    batch = batch_of([traj(0, 1.0), traj(0, 0.0), traj(0, 0.0)])
    adv, _ = RLOO().assign(batch)
    assert row_adv(batch, adv).tolist() == pytest.approx([1.0, -0.5, -0.5])


def test_levenshtein_kept_golden():
    # source a b c d, target a x c d e: b substituted, e inserted
    assert levenshtein_kept([1, 2, 3, 4], [1, 9, 3, 4, 5]) == [True, False, True, True]
    assert levenshtein_kept([1, 2, 3], [1, 2, 3]) == [True, True, True]
    assert levenshtein_kept([1, 2, 3], []) == [False, False, False]
    assert levenshtein_kept([7, 1, 2], [1, 2]) == [False, True, True]  # deletion of the first token


def test_ibpo_shaped_reward_and_edit_mask_golden():
    # group 0: rows 0 (right), 1 (wrong, repaired), 2 (wrong, repair failed), 3 (wrong, no repair)
    trajs = [traj(0, 1.0, (5, 6, 7)), traj(0, 0.0, (5, 8, 7)), traj(0, 0.0, (5, 6, 9)), traj(0, 0.0, (1, 1, 1)),
             revision(1, 0, 1.0, (5, 6, 7)), revision(2, 0, 0.0, (5, 6, 7))]
    batch = batch_of(trajs)
    adv, weights = IBPO(shaping_coef=0.6, repair_bonus=0.5).assign(batch)
    shaped = torch.tensor([1.0, 0.3, 0.0, 0.0])  # R + 0.6 * 0.5 for the repaired row
    expected = (shaped - shaped.mean()) / (shaped.std() + 1e-6)
    # row 1: only the middle token (8 -> 6) was edited by its successful repair
    assert adv[1, 2:5].tolist() == pytest.approx([0.0, float(expected[1]), 0.0], abs=1e-6)
    for row in (0, 2, 3):  # unrepaired and correct rows keep the advantage on every token
        assert adv[row, 2:5].tolist() == pytest.approx([float(expected[row])] * 3, abs=1e-6)
    assert torch.count_nonzero(adv[4:]) == 0 and torch.count_nonzero(weights[4:]) == 0  # revisions not trained
    assert batch.stats["ibpo/edited_token_fraction"] == pytest.approx(1 / 3)


def test_ibpo_repaired_credit_blame_never_reinforces_a_failure():
    # one right answer in five: the repaired failure's shaped reward 0.3 is above the group mean
    trajs = [traj(0, 1.0, (5, 6, 7)), traj(0, 0.0, (5, 8, 7)), traj(0, 0.0, (1, 1, 1)), traj(0, 0.0, (2, 2, 2)),
             traj(0, 0.0, (3, 3, 3)), revision(1, 0, 1.0, (5, 6, 7))]
    shaped = torch.tensor([1.0, 0.3, 0.0, 0.0, 0.0])
    expected = (shaped - shaped.mean()) / (shaped.std() + 1e-6)
    batch = batch_of(trajs)
    adv, _ = IBPO().assign(batch)
    assert float(expected[1]) > 0 and adv[1, 2:5].tolist() == pytest.approx([0.0, float(expected[1]), 0.0], abs=1e-6)
    assert batch.stats["ibpo/repaired_positive"] == 1.0
    blamed, _ = IBPO(repaired_credit="blame").assign(batch_of(trajs))
    assert torch.count_nonzero(blamed[1]) == 0  # the positive credit on the wrong token is gone
    for row in (0, 2, 3, 4):  # every other row is unchanged
        assert blamed[row].tolist() == pytest.approx(adv[row].tolist())
    # with enough right siblings the repaired failure's advantage is negative: both readings agree
    trajs = [traj(0, 1.0, (5, 6, 7)), traj(0, 1.0, (5, 6, 7)), traj(0, 0.0, (5, 8, 7)), revision(2, 0, 1.0, (5, 6, 7))]
    assert torch.equal(IBPO().assign(batch_of(trajs))[0], IBPO(repaired_credit="blame").assign(batch_of(trajs))[0])
    with pytest.raises(ValueError, match="repaired_credit"):
        IBPO(repaired_credit="sign")


def test_ibpo_mask_is_complement_of_unchanged_tokens():
    wrong, fixed = (3, 4, 5, 6, 7, 8), (3, 9, 5, 6, 8, 10)
    batch = batch_of([traj(0, 1.0), traj(0, 0.0, wrong), revision(1, 0, 1.0, fixed)])
    ibpo = IBPO(normalize_std=False)
    adv, _ = ibpo.assign(batch)
    kept = levenshtein_kept(list(wrong), list(fixed))
    nonzero = (adv[1, 2:8] != 0).tolist()
    assert nonzero == [not k for k in kept]
    half = IBPO(normalize_std=False, unchanged_weight=0.5).assign(batch)[0]
    assert half[1, 2:8].tolist() == pytest.approx([float(adv[1, 3]) * (0.5 if k else 1.0) for k in kept])


def test_ibpo_signal_mean_and_max_over_references():
    trajs = [traj(0, 1.0), traj(0, 0.0, (5, 8, 7)), revision(1, 0, 1.0, (5, 6, 7)), revision(1, 0, 0.0, (5, 6, 7))]
    mean_adv, _ = IBPO(normalize_std=False, mask_mode="none").assign(batch_of(trajs))
    max_adv, _ = IBPO(normalize_std=False, mask_mode="none", signal="max").assign(batch_of(trajs))
    # mean: phi = 0.25, shaped = [1, 0.15]; max: phi = 0.5, shaped = [1, 0.3]
    assert mean_adv[1, 2].item() == pytest.approx(0.15 - 0.575)
    assert max_adv[1, 2].item() == pytest.approx(0.3 - 0.65)


def test_ibpo_uniform_groups_zero_unless_a_repair_succeeds():
    right = batch_of([traj(0, 1.0), traj(0, 1.0)])
    assert torch.count_nonzero(IBPO().assign(right)[0]) == 0
    wrong = batch_of([traj(0, 0.0), traj(0, 0.0)])
    assert torch.count_nonzero(IBPO().assign(wrong)[0]) == 0
    repaired = batch_of([traj(0, 0.0), traj(0, 0.0, (5, 8, 7)), revision(1, 0, 1.0, (5, 6, 7))])
    assert torch.count_nonzero(IBPO().assign(repaired)[0]) > 0


def test_ibpo_references_prefer_correct_siblings():
    ibpo = IBPO(n_refs=2, seed=3)
    correct = [False, True, False, True, False]
    refs = ibpo.references(0, [0, 1, 2, 3, 4], correct)
    assert sorted(refs) == [1, 3]
    assert IBPO(n_refs=None).references(0, [0, 1, 2, 3, 4], correct)[:2] in ([1, 3], [3, 1])
    assert IBPO(fallback_refs="skip").references(0, [0, 2, 4], [False] * 5) == []
    assert sorted(IBPO(fallback_refs="incorrect").references(0, [0, 2, 4], [False] * 5)) == [2, 4]


def test_ibpo_repair_pairs_are_capped_per_group():
    batch = batch_of([traj(0, 0.0)] * 4 + [traj(1, 1.0)] * 4)
    assert len(IBPO().repair_pairs(batch)) == 4 * 3  # all K-1 siblings, group 1 all right
    assert len(IBPO(max_repairs_per_group=5).repair_pairs(batch)) == 5


def test_ibpo_step_granularity_marks_whole_steps():
    wrong = traj(0, 0.0, (5, 6, 7, 8), step_boundaries=(2,))  # steps [5 6] [7 8]
    batch = batch_of([traj(0, 1.0, (5, 6, 7, 8)), wrong, revision(1, 0, 1.0, (5, 6, 7, 9))])
    adv, _ = IBPO(mask_granularity="step", normalize_std=False).assign(batch)
    assert (adv[1, 2:6] != 0).tolist() == [False, False, True, True]


def test_ibpo_rejects_bad_prompt_template():
    with pytest.raises(ValueError, match="reference"):
        IBPO(repair_prompt="{problem} {attempt}")


def test_estimator_choices_are_a_function_of_the_step():
    """IBPO's capped repair pairs come from the step's generator: the same step (seed, rank and
    version: ``batch.seed``, ``policy_version``) draws the same pairs, whatever ran before (a
    resumed run, another rank's history); another step draws others."""
    rows = [traj(g, float(i == 0)) for g in range(3) for i in range(6)]

    def pairs(seed, version, warm_up=0):
        ibpo = IBPO(max_repairs_per_group=2)
        for k in range(warm_up):  # earlier steps leave nothing behind
            earlier = batch_of(rows)
            earlier.seed = 100 + k
            ibpo.repair_pairs(earlier)
        batch = batch_of(rows)
        batch.seed, batch.policy_version = seed, version
        return ibpo.repair_pairs(batch)

    assert pairs(7, 3) == pairs(7, 3, warm_up=5)
    assert len({tuple(pairs(s, v)) for s in (7, 8) for v in (3, 4)}) == 4
    assert IBPO().state_dict() == {}  # nothing to checkpoint
