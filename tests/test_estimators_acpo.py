"""ACPO (reconstructed): golden values by hand, attribution with a real tiny model, a CLI run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ibpo_lightning.models.policy import with_scoring
from ibpo_lightning.training import Scorer

from ibpo_lightning.cli import run_cli
from ibpo_lightning.estimators import ACPO
from ibpo_lightning.estimators.functional import attribution_factors, step_of_tokens, zscore
from ibpo_lightning.models import load_policy
from ibpo_lightning.tasks import Problem
from ibpo_lightning.types import RolloutBatch, Trajectory
from tests.helpers import LastRollout

ROOT = Path(__file__).parents[1]
A = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # GRPO advantage of rewards [1, 0, 1, 0] (unbiased std)


def row(group, reward, response=(5, 6, 7, 8), logprobs=None, boundaries=(), prompt=(1, 2)) -> Trajectory:
    response = list(response)
    return Trajectory(prompt_ids=list(prompt), response_ids=response, prompt_text="q",
                      logprobs=list(logprobs) if logprobs else [-1.0] * len(response),
                      response_text="", group=group, reward=reward, step_boundaries=tuple(boundaries))


def batch_of(rows, answers=None, version=0) -> RolloutBatch:
    n = max(t.group for t in rows) + 1
    batch = RolloutBatch(list(rows), policy_version=version, groups=[Problem("p", a) for a in answers or ["7"] * n])
    return batch.collate(pad_id=0)


def test_step_helpers_golden():
    assert step_of_tokens(5, (2, 3)).tolist() == [0, 0, 1, 2, 2]
    assert zscore(torch.tensor([1.0, 3.0])).tolist() == [-1.0, 1.0]
    assert zscore(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0] and zscore(torch.tensor([4.0])).tolist() == [0.0]
    z = torch.tensor([-1.0, 1.0])
    assert attribution_factors(z, 1.0, 0.5).tolist() == [0.5, 1.5]
    assert attribution_factors(z, -1.0, 0.5).tolist() == [1.5, 0.5]
    assert attribution_factors(z, 1.0, 3.0).tolist() == [0.0, 4.0]  # clipped: never flips the sign


def test_acpo_factorised_step_credit_golden():
    rows = [row(0, 1.0, boundaries=(2,)), row(0, 0.0, boundaries=(2,)), row(0, 1.0), row(0, 0.0)]
    batch = batch_of(rows)
    est = ACPO(entropy_coef=0.0, attribution_coef=0.5)
    # row 0 (correct): step 2 raised the answer's log-prob most; row 1 (wrong): step 2 lowered it
    batch.notes[ACPO.STEP_SCORES] = {0: [1.0, 3.0], 1: [2.0, -2.0], 2: [0.7], 3: [-0.3]}
    adv, w = est.assign(batch)
    assert adv[0, 2:6].tolist() == pytest.approx([0.5 * A, 0.5 * A, 1.5 * A, 1.5 * A], rel=1e-5)
    assert adv[1, 2:6].tolist() == pytest.approx([-0.5 * A, -0.5 * A, -1.5 * A, -1.5 * A], rel=1e-5)
    assert adv[2, 2:6].tolist() == pytest.approx([A] * 4, rel=1e-5)  # one step: factor 1
    assert adv[3, 2:6].tolist() == pytest.approx([-A] * 4, rel=1e-5)
    assert torch.equal(w, batch.response_mask)  # pass rate 0.5 lies in the stage-1 band
    batch.notes[ACPO.STEP_SCORES] = {0: [1.0], 1: [2.0, -2.0], 2: [0.7], 3: [-0.3]}
    with pytest.raises(ValueError, match="has 1 values for 2 steps"):
        est.assign(batch)


def test_acpo_without_attribution_is_grpo():
    rows = [row(0, 1.0, boundaries=(2,)), row(0, 0.0), row(0, 1.0), row(0, 0.0)]
    adv, _ = ACPO(attribution="none", entropy_coef=0.0).assign(batch_of(rows))
    assert adv[:, 2].tolist() == pytest.approx([A, -A, A, -A], rel=1e-5)


def test_acpo_uniform_groups_get_nothing_unless_entropy_is_regulated():
    rows = [row(0, 1.0), row(0, 1.0), row(1, 0.0), row(1, 0.0), row(2, 1.0), row(2, 0.0)]
    wide = ACPO(entropy_coef=0.0, stage1_band=(0.0, 1.0)).assign(batch_of(rows))[0]
    assert torch.count_nonzero(wide[:4]) == 0 and torch.count_nonzero(wide[4:]) > 0
    # the default stage-1 band (0.2, 0.8) also drops the all-right and all-wrong groups from the loss
    _, w = ACPO(entropy_coef=0.0).assign(batch_of(rows))
    assert torch.count_nonzero(w[:4]) == 0 and torch.equal(w[4:], batch_of(rows).response_mask[4:])
    varied = [row(0, 1.0, logprobs=(-0.2, -2.0, -0.1, -0.1)), row(0, 1.0, logprobs=(-0.5,) * 4)]
    regulated = ACPO(entropy_coef=0.1, target_entropy=5.0, stage1_band=(0.0, 1.0)).assign(batch_of(varied))[0]
    assert torch.count_nonzero(regulated) > 0  # the entropy bonus is not group-relative


def test_acpo_entropy_regulation_golden():
    rows = [row(0, 1.0, (5, 6), logprobs=(-0.2, -0.6)), row(0, 0.0, (5, 6), logprobs=(-0.1, -0.3))]
    batch = batch_of(rows)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    h = (0.2 + 0.6 + 0.1 + 0.3) / 4  # batch entropy estimate: mean surprisal 0.3 nats < target 1
    est = ACPO(attribution="none", entropy_coef=0.1, target_entropy=1.0, stage1_band=(0.0, 1.0))
    adv, _ = est.assign(batch)
    assert adv[0, 2:4].tolist() == pytest.approx([a + 0.1 * (0.2 - h), a + 0.1 * (0.6 - h)], rel=1e-5)
    assert adv[1, 2:4].tolist() == pytest.approx([-a + 0.1 * (0.1 - h), -a + 0.1 * (0.3 - h)], rel=1e-5)
    assert batch.stats["acpo/entropy"] == pytest.approx(h) and batch.stats["acpo/entropy_regulated"] == 1.0
    # above the target, or with attribution scores, only crucial steps get the bonus
    assert ACPO(attribution="none", entropy_coef=0.1, target_entropy=0.2, stage1_band=(0.0, 1.0)).assign(
        batch)[0][0, 2:4].tolist() == pytest.approx([a, a], rel=1e-5)
    three = [row(0, 1.0, (5, 6, 7), logprobs=(-0.2, -0.6, -0.4), boundaries=(1, 2)), row(0, 0.0, (5, 6, 7))]
    est = ACPO(entropy_coef=0.1, target_entropy=9.0, attribution_coef=0.0, stage1_band=(0.0, 1.0))
    three = batch_of(three)
    three.notes[ACPO.STEP_SCORES] = {0: [0.0, 1.0, 2.0], 1: [0.0]}  # z = -1.22, 0, 1.22: steps 0 and 2 are crucial
    out = est.assign(three)[0]
    h3 = (0.2 + 0.6 + 0.4 + 3.0) / 6
    assert out[0, 2:5].tolist() == pytest.approx([a + 0.1 * (0.2 - h3), a, a + 0.1 * (0.4 - h3)], rel=1e-5)


def test_acpo_curriculum_stage_two_golden():
    lp = {1: (-0.5,) * 4, 2: (-1.0,) * 4}
    rows = [row(0, 1.0, logprobs=lp[1]), row(0, 1.0, logprobs=lp[2]), row(0, 0.0), row(0, 1.0),  # pass 0.75
            row(1, 1.0, logprobs=lp[1]), row(1, 1.0, logprobs=lp[2]), row(1, 0.0), row(1, 0.0)]  # pass 0.5
    est = ACPO(attribution="none", entropy_coef=0.1, curriculum_switch_step=3)
    stage1 = est.assign(batch_of(rows, version=2))
    assert torch.count_nonzero(stage1[1][:4]) == 16  # stage 1: pass rate 0.75 is inside (0.2, 0.8)
    batch = batch_of(rows, version=3)
    adv, w = est.assign(batch)
    assert batch.stats["acpo/stage"] == 2.0 and batch.stats["acpo/entropy_regulated"] == 0.0
    assert torch.count_nonzero(w[:4]) == 0  # pass rate 0.75 is outside stage 2's (0, 0.5)
    shaped = torch.tensor([math.exp(-0.5), math.exp(-1.0), 0.0, 0.0])  # R * exp(mean log pi_old)
    expected = (shaped - shaped.mean()) / (shaped.std() + 1e-6)
    assert adv[4:, 2].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


@pytest.mark.parametrize("bad", [{"attribution": "gradient"}, {"stage1_band": (0.8, 0.2)}, {"dynamic_cuts": -1},
                                 {"max_steps": 0}, {"entropy_coef": -1.0}])
def test_acpo_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ACPO(**bad)


class CharTokenizer:
    """Token id -> text, enough for step segmentation."""

    vocab = {1: "a", 2: "\n\n", 3: "b", 4: "c"}

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)


def test_acpo_segmentation_delimiters_and_dynamic_cuts():
    tok, ids, logprobs = CharTokenizer(), [1, 2, 3, 4, 3, 3], [-0.1, -0.1, -0.2, -3.0, -0.1, -1.0]
    assert ACPO(dynamic_cuts=0).boundaries(tok, ids, logprobs) == (2,)  # after the blank line
    assert ACPO(dynamic_cuts=1).boundaries(tok, ids, logprobs) == (2, 3)  # a step starts at the surprise
    assert ACPO(dynamic_cuts=2).boundaries(tok, ids, logprobs) == (2, 3, 5)
    assert ACPO(dynamic_cuts=2, step_delimiter=None).boundaries(tok, ids, logprobs) == (3, 5)
    assert len(ACPO(dynamic_cuts=2, max_steps=2).boundaries(tok, ids, logprobs)) == 1


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-random-llama")


def answer_logprob(model, tokenizer, context: list[int], answer: str) -> float:
    """log pi(answer | context) by a plain forward pass, independent of ``token_logprobs``."""
    ans = tokenizer.encode(answer, add_special_tokens=False)
    ids = torch.tensor([context + ans])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(sum(logp[len(context) - 1 + j, t] for j, t in enumerate(ans)))


def test_acpo_attribution_is_the_answer_logprob_gain_of_each_step(tiny):
    model, tok = tiny
    cue = tok.encode("\nFinal answer: ", add_special_tokens=False)
    prompt, resp = tok.encode("What is 3 + 4?"), tok.encode("3 plus 4\n\nmakes 7.")
    rows = [row(0, 1.0, resp, boundaries=(3,), prompt=prompt), row(0, 0.0, resp[:4], prompt=prompt)]
    batch = batch_of(rows, answers=["7"])
    acpo = ACPO()
    scorer = Scorer(with_scoring(model), None, temperature=1.0, micro_batch_size=2, pad_id=tok.pad_token_id)
    scores = acpo.attribute(acpo.probes(batch, tok), scorer)
    assert [len(scores[0]), len(scores[1])] == [2, 1]
    level = [answer_logprob(model, tok, prompt + resp[:end] + cue, "7") for end in (0, 3, len(resp))]
    assert scores[0] == pytest.approx([level[1] - level[0], level[2] - level[1]], abs=1e-4)
    assert scores[1][0] == pytest.approx(answer_logprob(model, tok, prompt + resp[:4] + cue, "7") - level[0], abs=1e-4)


def test_acpo_two_step_fit_through_the_cli(tmp_path):
    cli = run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / "configs/estimators/acpo.yaml"),
                   "--data.task=tests.helpers.ParityTask", "--estimator.init_args.target_entropy=100",
                   f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                   "--trainer.logger=false", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0",
                   "--trainer.callbacks+=tests.helpers.LastRollout"])
    metrics, est = cli.trainer.callback_metrics, cli.trainer.callbacks
    acpo = next(cb for cb in est if isinstance(cb, ACPO))
    assert cli.model.policy_version == 2
    assert float(metrics["acpo/entropy_regulated"]) == 1.0 and float(metrics["acpo/steps_mean"]) >= 1.0
    last = next(cb for cb in est if isinstance(cb, LastRollout)).batch
    scores = last.notes[ACPO.STEP_SCORES]
    assert scores and all(math.isfinite(c) for steps in scores.values() for c in steps)
