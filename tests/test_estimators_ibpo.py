"""IBPO on multi-step answers: the line-level repair prompt and ``train_on_revision``, golden values
computed by hand with a scripted sampler and a scripted scorer."""

import math

import pytest
import torch

from ibpo_lightning.estimators import IBPO
from ibpo_lightning.estimators.functional import levenshtein_matches
from ibpo_lightning.estimators.repair_prompts import LINE_REPAIR_PROMPT, REPAIR_PROMPT
from ibpo_lightning.tasks import Problem
from ibpo_lightning.training.metrics import batch_metrics
from ibpo_lightning.types import Kind
from tests.helpers import traj
from tests.test_estimators_reset import FakeRollout, FakeTask, raw_batch

TASK_PROMPT, REPAIR_IDS = [3, 4], [1, 2, 2, 2]


class RepairRollout(FakeRollout):
    """Repair prompts encode to four tokens, so they differ from the two-token task prompt."""

    def encode(self, text, system_prompt=None):
        self.encoded.append(text)
        return list(REPAIR_IDS)


class ScriptedScorer:
    """``full`` returns scripted log-probs (row -> one value per response token); records its calls."""

    def __init__(self, logprobs=None):
        self.logprobs, self.calls = logprobs or {}, []

    def full(self, batch, rows, which="policy"):
        self.calls.append(list(rows))
        out = torch.zeros_like(batch.engine_logprobs)
        for r in rows:
            out[r, batch.response_slice(r)] = torch.tensor(self.logprobs.get(r, [0.0] * len(batch.trajectories[r].response_ids)))
        return out


# -- the line-level repair prompt -----------------------------------------------------------------
def test_line_repair_prompt_renders_as_intended():
    problem = "Start with 6. Add 7. Multiply by 3."
    attempt, reference = traj(0, 0.0), traj(0, 1.0)
    attempt.response_text = "6 + 7 = 13\n13 * 3 = 38\nAnswer: 38\n"
    reference.response_text = " 6 + 7 = 13\n13 * 3 = 39\nAnswer: 39"
    assert IBPO(repair_prompt="line").repair_text(Problem(problem, "39"), attempt, reference) == (
        "Start with 6. Add 7. Multiply by 3.\n\n"
        "Attempt A:\n6 + 7 = 13\n13 * 3 = 38\nAnswer: 38\n\n"
        "Attempt B:\n6 + 7 = 13\n13 * 3 = 39\nAnswer: 39\n\n"
        "Attempt A may contain a mistake. Compare it with attempt B line by line and find the first line "
        "of attempt A that is wrong. Then write attempt A again: copy every line before that one unchanged, "
        "and rewrite attempt A from that line on so that it is correct.")
    assert IBPO().repair_prompt == REPAIR_PROMPT == IBPO(repair_prompt="whole").repair_prompt
    assert IBPO(repair_prompt="line").repair_prompt == LINE_REPAIR_PROMPT
    own = "{problem}|{attempt}|{reference}"
    assert IBPO(repair_prompt=own).repair_text(Problem("p", "39"), attempt, reference).startswith("p|6 + 7 = 13")
    with pytest.raises(ValueError, match="one of \\['line', 'whole'\\]"):
        IBPO(repair_prompt="lines")  # neither a name nor a template
    with pytest.raises(ValueError, match="revision_is_cap"):
        IBPO(revision_is_cap=0.0)


def test_plan_sends_the_line_prompt_to_the_sampler():
    rollout = RepairRollout({"revision": [[10]]})
    batch = raw_batch([traj(0, 1.0, (9,), prompt=TASK_PROMPT), traj(0, 0.0, (5, 8, 7), prompt=TASK_PROMPT)])
    IBPO(repair_prompt="line").plan(batch, rollout, FakeTask())
    assert rollout.encoded == [LINE_REPAIR_PROMPT.format(problem="problem 0", attempt="5 8 7", reference="9")]


# -- the worked solution as reference (after InT) --------------------------------------------------
SOLUTION = "6 + 7 = 13\n13 * 3 = 39\nAnswer: 39"


def test_solution_prompts_render_as_intended():
    problem = Problem("Start with 6. Add 7. Multiply by 3.", "39", solution=SOLUTION + "\n")
    attempt, sibling = traj(0, 0.0), traj(0, 0.0)
    attempt.response_text, sibling.response_text = "6 + 7 = 13\n13 * 3 = 38\nAnswer: 38", "6 + 7 = 14\nAnswer: 42"
    assert IBPO(reference="solution").repair_text(problem, attempt, None) == (
        "Start with 6. Add 7. Multiply by 3.\n\n"
        "Attempt A:\n6 + 7 = 13\n13 * 3 = 38\nAnswer: 38\n\n"
        "A worked solution:\n6 + 7 = 13\n13 * 3 = 39\nAnswer: 39\n\n"
        "Attempt A may contain a mistake. Compare it with the worked solution, then write attempt A again, "
        "changing only what is needed to make it correct.")
    assert IBPO(reference="both", repair_prompt="line").repair_text(problem, attempt, sibling) == (
        "Start with 6. Add 7. Multiply by 3.\n\n"
        "Attempt A:\n6 + 7 = 13\n13 * 3 = 38\nAnswer: 38\n\n"
        "Attempt B:\n6 + 7 = 14\nAnswer: 42\n\n"
        "A worked solution:\n6 + 7 = 13\n13 * 3 = 39\nAnswer: 39\n\n"
        "Attempt A may contain a mistake. Compare it with attempt B and the worked solution line by line and "
        "find the first line of attempt A that is wrong. Then write attempt A again: copy every line before "
        "that one unchanged, and rewrite attempt A from that line on so that it is correct.")
    assert IBPO(reference="solution", repair_prompt="{problem}|{attempt}|{solution}").repair_text(
        problem, attempt, None) == "Start with 6. Add 7. Multiply by 3.|" + attempt.response_text + "|" + SOLUTION
    with pytest.raises(ValueError, match="containing {problem}, {attempt}, {solution}"):
        IBPO(reference="solution", repair_prompt="{problem}|{attempt}|{reference}")  # shows no solution
    with pytest.raises(ValueError, match="estimator.reference must be one of"):
        IBPO(reference="teacher")


def test_solution_reference_repairs_every_wrong_sample_even_with_no_correct_sibling():
    # group 0: one right, two wrong; group 1: both wrong (a sibling-only IBPO with fallback_refs
    # 'skip' repairs nothing there, the solution repairs each)
    rows = [traj(0, 1.0, (9,), prompt=TASK_PROMPT), traj(0, 0.0, (5, 8), prompt=TASK_PROMPT),
            traj(0, 0.0, (5, 7), prompt=TASK_PROMPT), traj(1, 0.0, (6,), prompt=TASK_PROMPT),
            traj(1, 0.0, (7,), prompt=TASK_PROMPT)]
    batch = raw_batch(rows, n_groups=2)
    batch.groups[:] = [Problem("problem 0", "1", solution="sol 0"), Problem("problem 1", "1", solution="sol 1")]
    rollout = RepairRollout({"revision": [[9], [10], [9], [10]]})  # 9 decodes to "ok": right
    IBPO(reference="solution", fallback_refs="skip").plan(batch, rollout, FakeTask())
    assert rollout.encoded == [repair_text.format(problem=f"problem {g}", attempt=a, reference="", solution=f"sol {g}")
                               for g, a in ((0, "5 8"), (0, "5 7"), (1, "6"), (1, "7"))
                               for repair_text in [IBPO(reference="solution").repair_prompt]]
    revisions = [t for t in batch.trajectories if t.kind == Kind.REVISION]
    assert [(t.parent, t.reward) for t in revisions] == [(1, 1.0), (2, 0.0), (3, 1.0), (4, 0.0)]
    assert batch.stats["ibpo/revisions"] == 4.0 and batch.stats["ibpo/revisions_correct"] == 2.0
    capped = raw_batch(rows, n_groups=2)
    capped.groups[:] = batch.groups
    IBPO(reference="solution", max_repairs_per_group=1).plan(capped, RepairRollout({"revision": [[9], [9]]}), FakeTask())
    assert capped.stats["ibpo/revisions"] == 2.0  # one per group


def test_solution_reference_names_the_problem_that_has_none():
    batch = raw_batch([traj(0, 1.0, (9,), prompt=TASK_PROMPT), traj(0, 0.0, (5,), prompt=TASK_PROMPT)])
    batch.groups[0] = Problem("What is 2 + 2?", "4", origin="data/train.jsonl line 7")
    with pytest.raises(ValueError, match=r"'What is 2 \+ 2\?' \(data/train.jsonl line 7\) has none"):
        IBPO(reference="both").plan(batch, RepairRollout({"revision": [[9]]}), FakeTask())


# -- train_on_revision ----------------------------------------------------------------------------
def golden_batch(estimator, replies=((5, 9, 7, 9), (10,)), wrong=(5, 6, 7)):
    """Group 0 (task prompt [3, 4]): row 0 right (9 = "ok"), rows 1 and 2 wrong. Each wrong row is
    repaired once with row 0 as reference: row 1 -> 5 9 7 9 (right), row 2 -> 10 (wrong)."""
    fresh = [traj(0, 1.0, (9,), prompt=TASK_PROMPT), traj(0, 0.0, wrong, prompt=TASK_PROMPT),
             traj(0, 0.0, (5, 8), prompt=TASK_PROMPT)]
    batch = raw_batch(fresh)
    estimator.plan(batch, RepairRollout({"revision": [list(r) for r in replies]}), FakeTask())
    return batch.collate(pad_id=0)


def test_train_on_revision_adds_one_row_per_verified_repair():
    batch = golden_batch(IBPO(n_refs=1, train_on_revision=True))
    kinds = [t.kind for t in batch.trajectories]
    assert kinds == [Kind.FRESH] * 3 + [Kind.REVISION] * 2 + [Kind.REROOTED_REVISION]
    extra, repair = batch.trajectories[5], batch.trajectories[3]
    assert repair.prompt_ids == REPAIR_IDS and repair.reward == 1.0 and batch.trajectories[4].reward == 0.0
    assert extra.prompt_ids == TASK_PROMPT and extra.response_ids == [5, 9, 7, 9]
    assert extra.parent == 3 and extra.trained and extra.group == 0 and extra.reward == 1.0
    assert batch.input_ids[5, :6].tolist() == [3, 4, 5, 9, 7, 9]
    # several references: 2 wrong x 3 siblings = 6 repairs, replies right, wrong, right in turn
    fresh = [traj(0, 1.0, (9,)), traj(0, 1.0, (9,)), traj(0, 0.0, (5, 6)), traj(0, 0.0, (5, 8))]
    batch = raw_batch(fresh)
    IBPO(train_on_revision=True).plan(batch, RepairRollout({"revision": [[9], [10], [9]]}), FakeTask())
    repairs = [i for i, t in enumerate(batch.trajectories) if t.kind == Kind.REVISION]
    verified = [i for i in repairs if batch.trajectories[i].reward == 1.0]
    extra = [t for t in batch.trajectories if t.kind == Kind.REROOTED_REVISION]
    assert len(repairs) == 6 and len(verified) == 4
    assert [t.parent for t in extra] == verified
    assert all(t.prompt_ids == batch.trajectories[batch.trajectories[t.parent].parent].prompt_ids for t in extra)


def test_train_on_revision_golden_credit_and_importance_weight():
    ibpo = IBPO(n_refs=1, train_on_revision=True, revision_is_cap=1.5)
    batch = golden_batch(ibpo)
    # pi(y | x) of the rerooted row 5 and pi(y | x~) of the repair it copies (row 3)
    scorer = ScriptedScorer({5: [-1.0, -2.0, -0.5, -3.0], 3: [-1.0, -0.5, -0.5, -3.5]})
    ibpo.prepare(batch, scorer)
    assert scorer.calls == [[5, 3]]
    adv, weights = ibpo.assign(batch)
    # 5 6 7 -> 5 9 7 9: 6 substituted by 9, 9 inserted; the repair's edited tokens are 2nd and 4th
    assert levenshtein_matches([5, 6, 7], [5, 9, 7, 9])[1] == [True, False, True, False]
    shaped = torch.tensor([1.0, 0.3, 0.0])  # R' = R + 0.6 * 0.5 for the repaired row 1
    a_rev = (1.0 - 1.3 / 3) / (float(shaped.std()) + 1e-6)  # a correct sample's advantage in the group
    w = [math.exp(-2.0 + 0.5), min(math.exp(-3.0 + 3.5), 1.5)]  # capped at 1.5
    assert adv[5, 2:6].tolist() == pytest.approx([0.0, a_rev * w[0], 0.0, a_rev * w[1]], rel=1e-5)
    assert torch.count_nonzero(adv[5, :2]) == 0 and torch.count_nonzero(adv[5, 6:]) == 0
    assert weights[5].tolist()[:6] == [0.0, 0.0, 0.0, 1.0, 0.0, 1.0] and weights[5].sum() == 2.0
    assert adv[0, 2].item() == pytest.approx(a_rev, rel=1e-5)  # equal to the correct sibling's
    assert batch.stats["ibpo/revision_rows"] == 1.0
    assert batch.stats["ibpo/revision_is_weight"] == pytest.approx(sum(w) / 2)
    # the row's engine log-probs are moved onto x: sampled (-0.5) + log pi(y|x) - log pi(y|x~)
    assert batch.engine_logprobs[5, 2:6].tolist() == pytest.approx([-0.5, -2.0, -0.5, 0.0])
    # the group baseline, the other rows and the metrics are those of the same batch without it
    plain = IBPO(n_refs=1)
    off = golden_batch(plain)
    off_adv, off_weights = plain.assign(off)
    assert torch.equal(adv[:5], off_adv[:5]) and torch.equal(weights[:5], off_weights[:5])
    assert torch.equal(batch.engine_logprobs[:5], off.engine_logprobs[:5])
    batch.advantages, batch.loss_weights, off.advantages, off.loss_weights = adv, weights, off_adv, off_weights
    on_metrics, off_metrics = batch_metrics(batch), batch_metrics(off)
    for key in ("train/reward_mean", "train/accuracy", "train/response_length"):
        assert on_metrics[key] == off_metrics[key]
    assert list(batch.fresh_groups().values()) == [[0, 1, 2]]


def test_train_on_revision_without_std_and_by_steps():
    ibpo = IBPO(n_refs=1, train_on_revision=True, normalize_std=False)
    batch = golden_batch(ibpo)
    ibpo.prepare(batch, ScriptedScorer())  # equal log-probs under both prompts: w = 1
    adv, _ = ibpo.assign(batch)
    assert adv[5, 2:6].tolist() == pytest.approx([0.0, 1 - 1.3 / 3, 0.0, 1 - 1.3 / 3])
    steps = IBPO(n_refs=1, train_on_revision=True, mask_granularity="step")
    # wrong "x\n</thought>\ny" -> repair "x\noky" (steps [5 8] [9 7]): 6 -> 9 and one 8 dropped
    batch = golden_batch(steps, replies=((5, 8, 9, 7), (10,)), wrong=(5, 8, 6, 8, 7))
    assert batch.trajectories[-1].step_boundaries == (2,)
    assert levenshtein_matches([5, 8, 6, 8, 7], [5, 8, 9, 7])[1] == [True, True, False, True]
    steps.prepare(batch, ScriptedScorer())
    adv, weights = steps.assign(batch)
    assert weights[-1, 2:6].tolist() == [0.0, 0.0, 1.0, 1.0]  # the edited token's whole step
    assert torch.count_nonzero(adv[-1, 2:4]) == 0 and bool((adv[-1, 4:6] > 0).all())


def test_switch_off_adds_nothing_and_scores_nothing():
    ibpo = IBPO(n_refs=1)
    batch = golden_batch(ibpo)
    assert len(batch) == 5 and Kind.REROOTED_REVISION not in [t.kind for t in batch.trajectories]
    scorer = ScriptedScorer()
    ibpo.prepare(batch, scorer)
    assert scorer.calls == []


def test_rows_are_scored_on_every_rank_even_without_repairs():
    ibpo = IBPO(n_refs=1, train_on_revision=True)
    batch = golden_batch(ibpo, replies=((10,),))  # no repair verified: no extra row
    assert len(batch) == 5
    scorer = ScriptedScorer()
    ibpo.prepare(batch, scorer)
    assert scorer.calls == [[]]  # the scorer still runs (its rank-matched empty passes)
    adv, _ = ibpo.assign(batch)
    assert batch.stats["ibpo/revision_rows"] == 0.0 and torch.isfinite(adv).all()


def test_assign_refuses_rerooted_rows_that_prepare_did_not_score():
    ibpo = IBPO(n_refs=1, train_on_revision=True)
    batch = golden_batch(ibpo)
    with pytest.raises(ValueError, match="prepare"):
        ibpo.assign(batch)
