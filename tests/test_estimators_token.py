"""Token-level credit without extra rollouts: KTAE, TEMPO and the forking-token mask, golden values
derived by hand from small groups (the tables, trees and top-k written out in the comments)."""

import math

import pytest
import torch

from ibpo_lightning.estimators import KTAE, TEMPO, ForkingTokens
from ibpo_lightning.estimators.ktae import fisher_two_sided, information_gain
from ibpo_lightning.estimators.tempo import prefix_steps
from tests.helpers import batch_of, traj

A2 = 0.5 / math.sqrt(1 / 3)  # GRPO's |advantage| in a group with rewards [1, 1, 0, 0] (unbiased std)


def h(p: float) -> float:
    """Binary entropy in bits."""
    return -sum(q * math.log2(q) for q in (p, 1 - p) if q > 0)


def response_adv(batch, adv, row):
    return adv[row, batch.response_slice(row)].tolist()


# -- KTAE ---------------------------------------------------------------------------------------
def test_fisher_exact_test_and_information_gain_by_hand():
    # [[3, 1], [1, 3]]: margins 4/4 of 8, P(k) = C(4,k) C(4,4-k) / 70 = 1, 16, 36, 16, 1 (/70);
    # P(3) = 16/70, and the tables no more likely are k = 0, 1, 3, 4
    assert fisher_two_sided(3, 1, 1, 3) == pytest.approx(34 / 70)
    assert fisher_two_sided(2, 0, 0, 2) == pytest.approx(1 / 3)  # 1, 4, 1 (/6): k = 0 and 2
    assert fisher_two_sided(2, 1, 0, 1) == pytest.approx(1.0)  # two equally likely tables
    assert information_gain(2, 0, 0, 2) == pytest.approx(1.0)  # presence tells correctness exactly
    assert information_gain(2, 1, 0, 1) == pytest.approx(1 - 0.75 * h(2 / 3))
    assert information_gain(1, 1, 1, 1) == pytest.approx(0.0)


def ktae_group(extra_tail=()):
    """Rewards [1, 1, 0, 0], answers [5 9] [5 9] [5 7] [6 7] (+ ``extra_tail`` on every answer)."""
    tail = list(extra_tail)
    return batch_of([traj(0, 1.0, [5, 9] + tail), traj(0, 1.0, [5, 9] + tail), traj(0, 0.0, [5, 7] + tail),
                     traj(0, 0.0, [6, 7] + tail)])


def test_ktae_golden_values_without_the_frequency_term():
    # token 5: a=2 b=1 c=0 d=1 -> p = 1 (F = 0), IG = 1 - 3/4 h(2/3), x = asin(1) - asin(sqrt(1/2)) = pi/4
    # token 9: a=2 b=0 c=0 d=2 -> p = 1/3 (F = e^(-2/3)), IG = 1, x = pi/2; token 7 mirrors it
    # token 6: a=0 b=1 c=2 d=1 -> F = 0, IG as token 5, x = -pi/4
    # v = 2 (sigmoid(z) - 1/2) = tanh(z / 2), z = (F + IG) x / 2
    ig = 1 - 0.75 * h(2 / 3)
    v5 = math.tanh(ig * (math.pi / 4) / 2 / 2)
    v9 = math.tanh((math.exp(-2 / 3) + 1) * (math.pi / 2) / 2 / 2)
    batch = ktae_group()
    est = KTAE(frequency_term=False)
    assert est.key_values([[5, 9], [5, 9], [5, 7], [6, 7]], [True, True, False, False]) == pytest.approx(
        {5: v5, 9: v9, 7: -v9, 6: -v5})
    adv, weights = est.assign(batch)
    assert response_adv(batch, adv, 0) == pytest.approx([A2 + v5, A2 + v9], rel=1e-5)
    assert response_adv(batch, adv, 2) == pytest.approx([-A2 + v5, -A2 - v9], rel=1e-5)
    assert response_adv(batch, adv, 3) == pytest.approx([-A2 - v5, -A2 - v9], rel=1e-5)
    assert torch.equal(weights, batch.response_mask) and torch.all(adv[:, :2] == 0)


def test_ktae_frequency_term_and_the_end_token():
    # token 5 with the frequency term: each side has 4 tokens (L_T = L_F = L_avg = 4, so K = k1 = 2);
    # f_T = 2/4, f_F = 1/4; tf = f * 3 / (f + 2): 0.6 and 1/3; x = pi/4 + 0.6 / (1/3 + 1e-5) - (1/3) / (0.6 + 1e-5)
    ig = 1 - 0.75 * h(2 / 3)
    x = math.pi / 4 + 0.6 / (1 / 3 + 1e-5) - (1 / 3) / (0.6 + 1e-5)
    values = KTAE().key_values([[5, 9], [5, 9], [5, 7], [6, 7]], [True, True, False, False])
    assert values[5] == pytest.approx(math.tanh(ig * x / 4))
    assert values[9] == pytest.approx(1.0, abs=1e-6)  # on the right answers only: saturates at top
    # the end token (here 2, on every answer) gets no value, as a token of every answer would
    batch = ktae_group(extra_tail=[2])
    batch.notes[KTAE.SKIP] = [2]
    adv, _ = KTAE(frequency_term=False).assign(batch)
    assert adv[0, batch.response_slice(0)][-1] == pytest.approx(A2, rel=1e-5)


def test_ktae_is_grpo_where_a_group_is_all_right_or_all_wrong():
    batch = batch_of([traj(0, 1.0, [5, 9]), traj(0, 1.0, [5, 8]), traj(1, 0.0, [5]), traj(1, 0.0, [6])])
    adv, weights = KTAE().assign(batch)
    assert torch.all(adv == 0) and torch.equal(weights, batch.response_mask)
    assert batch.stats["ktae/value_abs_mean"] == 0.0


# -- TEMPO --------------------------------------------------------------------------------------
def test_tempo_tree_steps_by_hand():
    # answers 1 2 3 (right), 1 2 4 (wrong), 1 5 (right), 6 (wrong); A = +a, -a, +a, -a with a = A2.
    # V(root) = 0, V(1) = a/3, V(1 2) = 0, V(1 2 3) = a, V(1 2 4) = -a, V(1 5) = a, V(6) = -a;
    # root, node 1 and node 1 2 each branch, so every token is a branching token here
    a = A2
    steps = prefix_steps([[1, 2, 3], [1, 2, 4], [1, 5], [6]], [a, -a, a, -a])
    assert steps[0] == pytest.approx([a / 3, -a / 3, a])
    assert steps[1] == pytest.approx([a / 3, -a / 3, -a])
    assert steps[2] == pytest.approx([a / 3, 2 * a / 3])
    assert steps[3] == pytest.approx([-a])
    for s, v in zip(steps, [a, -a, a, -a]):
        assert sum(s) == pytest.approx(v)  # the steps along an answer add up to A_i - V(root)
    batch = batch_of([traj(0, 1.0, [1, 2, 3]), traj(0, 0.0, [1, 2, 4]), traj(0, 1.0, [1, 5]), traj(0, 0.0, [6])])
    adv, weights = TEMPO().assign(batch)
    assert response_adv(batch, adv, 1) == pytest.approx([-a + a / 3, -a - a / 3, -2 * a], rel=1e-5)
    assert response_adv(batch, adv, 3) == pytest.approx([-2 * a], rel=1e-5)
    assert torch.equal(weights, batch.response_mask)


def test_tempo_is_grpo_before_the_answers_part():
    # 7 1 2 (right) and 7 1 3 (wrong): the shared tokens 7 1 have one child each, a step of 0;
    # at the last token V moves from 0 to +-a (a = 0.5 / std([1, 0]) = 1 / sqrt(2))
    a = 1 / math.sqrt(2)
    batch = batch_of([traj(0, 1.0, [7, 1, 2]), traj(0, 0.0, [7, 1, 3])])
    adv, _ = TEMPO().assign(batch)
    assert response_adv(batch, adv, 0) == pytest.approx([a, a, 2 * a], rel=1e-5)
    assert response_adv(batch, adv, 1) == pytest.approx([-a, -a, -2 * a], rel=1e-5)
    assert batch.stats["tempo/step_token_fraction"] == pytest.approx(2 / 6)
    grpo, _ = TEMPO(td_coef=0.0).assign(batch)
    assert response_adv(batch, grpo, 0) == pytest.approx([a, a, a], rel=1e-5)


# -- forking tokens ----------------------------------------------------------------------------
class EntropyScorer:
    """``entropies`` returns scripted values: row -> one entropy per response token."""

    def __init__(self, values):
        self.values, self.rows = values, None

    def entropies(self, batch, rows, which="policy"):
        self.rows = list(rows)
        out = torch.zeros_like(batch.engine_logprobs)
        for r in rows:
            out[r, batch.response_slice(r)] = torch.tensor(self.values[r])
        return out


def test_forking_tokens_keep_the_top_share_by_entropy():
    batch = batch_of([traj(0, 1.0, [5, 6, 7, 8, 9]), traj(0, 0.0, [5, 6, 7, 8, 9])])
    scorer = EntropyScorer({0: [0.1, 2.0, 0.3, 0.0, 0.2], 1: [0.5, 0.1, 1.5, 0.4, 0.05]})
    est = ForkingTokens(top_share=0.2)  # ceil(0.2 * 10) = 2 tokens: entropies 2.0 (row 0) and 1.5 (row 1)
    est.prepare(batch, scorer)
    assert scorer.rows == [0, 1]
    adv, weights = est.assign(batch)
    a = 1 / math.sqrt(2)
    assert response_adv(batch, adv, 0) == pytest.approx([0, a, 0, 0, 0], rel=1e-5)
    assert response_adv(batch, adv, 1) == pytest.approx([0, 0, -a, 0, 0], rel=1e-5)
    assert torch.equal(weights, batch.response_mask)  # every token still counts in the loss's mean
    assert batch.stats["forking/entropy_threshold"] == pytest.approx(1.5)
    wider = ForkingTokens(top_share=0.25)  # ceil(2.5) = 3: the 0.5 of row 1 joins
    wider.prepare(batch, scorer)
    adv, _ = wider.assign(batch)
    assert response_adv(batch, adv, 1) == pytest.approx([-a, 0, -a, 0, 0], rel=1e-5)
    assert torch.equal(ForkingTokens(top_share=1.0).assign(batch)[0] != 0, batch.response_mask.bool())


def test_forking_tokens_refuse_a_missing_prepare_and_a_bad_share():
    with pytest.raises(ValueError, match="top_share"):
        ForkingTokens(top_share=0.0)
    with pytest.raises(ValueError, match="call prepare first"):
        ForkingTokens().assign(batch_of([traj(0, 1.0), traj(0, 0.0)]))
