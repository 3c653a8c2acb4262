"""IBPO: Implicit Behavior Policy Optimization (arXiv 2605.16302), compare-and-correct credit.

For each wrong sample tau_i of a group, the policy is asked to repair it given a sibling as
reference (correct siblings first); each repair y_hat is verified. Then

    Delta_ik = rho * 1[R_i = 0 and r(y_hat_ik) = 1]          (rho = ``repair_bonus`` = 0.5)
    phi_i    = mean_k Delta_ik   (0 for correct tau_i)       (``signal``: mean | max)
    R'_i     = R_i + lambda * phi_i                           (lambda = ``shaping_coef`` = 0.6)
    A'_i     = (R'_i - mean_g R') / (std_g R' + eps)          (``normalize_std``)
    A_i,t    = m_i,t * A'_i,  m_i,t = 1[t not kept unchanged by a successful repair]

What is reconstructed (the full paper text was not available; see docs/estimators.md):
the aggregation of several references into s_i (mean), the use of incorrect siblings when no
correct one exists (``fallback_refs``), the wording of both repair prompts (``whole``: rewrite the
attempt minimally; ``line``: keep the lines before the first wrong one, rewrite from there, so
the edit mask localises to a step), the union of edits over several successful repairs, the
step-granular mask variant, and the cap on repairs per group. ``train_on_revision`` adds the
other reading of "credit only to the edited tokens" (reference notes §1.5 item 6): verified
repairs trained on under the task prompt, see ``ibpo_revision.py`` for its formulas.

Multi-turn episodes (``rollout.environment``, chosen here): the repair prompt shows both episodes'
text (tool turns included), a repair is itself an episode with the tools, the edit mask aligns the
episodes' tokens (environment tokens never carry loss, the step masks them) and a step is a model
turn.
"""

from __future__ import annotations

import random
from typing import Literal

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import expand_to_steps, group_normalise, levenshtein_kept
from ibpo_lightning.estimators.ibpo_revision import rerooted_rows, revision_credit, score_rerooted
from ibpo_lightning.estimators.repair_prompts import repair_template
from ibpo_lightning.estimators.segments import check_delimiter, steps
from ibpo_lightning.tasks.base import Problem
from ibpo_lightning.types import GenerationKind, Kind, RolloutBatch, Trajectory



class IBPO(Estimator):
    """Compare-and-correct shaped reward with an edit mask.

    Args:
        shaping_coef: lambda in R' = R + lambda * phi.
        repair_bonus: rho, the comparison signal of one successful repair.
        n_refs: references per wrong sample; None pairs it with all K-1 siblings (the paper's).
        ref_policy: ``correct_first`` (correct siblings before wrong ones) or ``random``.
        fallback_refs: with no correct sibling, ``incorrect`` uses wrong siblings as references,
            ``skip`` leaves phi = 0.
        signal: how the repairs of one sample combine into s_i: ``mean`` or ``max``.
        normalize_std: divide the shaped reward by its group std (off = Dr.GRPO style).
        mask_mode: ``edited`` puts the advantage of repaired samples only on edited tokens;
            ``none`` uses the shaped advantage on every token.
        unchanged_weight: alpha, the advantage weight left on unchanged tokens (0 = edited only).
        mask_granularity: ``token`` (Levenshtein on tokens) or ``step`` (a step is edited if any
            of its tokens is).
        step_delimiter: text that ends a step for the ``step`` granularity.
        max_repairs_per_group: cap on repair generations per group (None = no cap).
        revision_temperature: sampling temperature of repairs (None = the rollout's).
        repair_prompt: ``whole`` (rewrite attempt A minimally, the default), ``line`` (find the first
            wrong line of attempt A, keep the lines before it, rewrite from it on), or a template of
            one's own (``repair_prompts.py`` names its fields).
        reference: what the repair prompt shows beside the wrong attempt: ``sibling`` (a sample of
            the same group, chosen by ``n_refs``, ``ref_policy`` and ``fallback_refs``; the paper's),
            ``solution`` (the task's worked solution, one repair per wrong sample, so a group without
            a correct sample is repaired too) or ``both`` (each sibling reference with the solution
            beside it). Not in the paper: the solution follows InT (arXiv 2601.14209).
        repaired_credit: what a repaired failure's edited tokens get: ``shaped`` (its group-normalised
            shaped advantage, the reconstruction's formula: positive when the group's mean shaped
            reward is below lambda * rho, so the tokens that were wrong get positive credit) or
            ``blame`` (only its negative part: a failure is never reinforced). Not in the paper:
            added after measuring the sign on real chain failures (docs/results.md, section 6.4).
        train_on_revision: add each verified repair as a trained row under the task prompt, with
            positive credit on the tokens it edited (see ``ibpo_revision.py``).
        revision_is_cap: cap of the per-token importance weight of those rows,
            pi(y_t | task prompt) / pi(y_t | repair prompt).
        correct_threshold: a reward at or above this counts as correct.
        eps: added to the std.
        seed: seed of reference choice and capping (with each step's own seed, ``Estimator.generator``).
    """

    name = "ibpo"
    REVISION_WEIGHTS = "ibpo/revision_weights"
    """``batch.notes`` key: w_t of each rerooted row (row -> [response length]), set by ``prepare``."""

    def __init__(
        self,
        shaping_coef: float = 0.6,
        repair_bonus: float = 0.5,
        n_refs: int | None = None,
        ref_policy: Literal["correct_first", "random"] = "correct_first",
        fallback_refs: Literal["incorrect", "skip"] = "incorrect",
        signal: Literal["mean", "max"] = "mean",
        normalize_std: bool = True,
        mask_mode: Literal["edited", "none"] = "edited",
        unchanged_weight: float = 0.0,
        mask_granularity: Literal["token", "step"] = "token",
        step_delimiter: str = "\n",
        max_repairs_per_group: int | None = None,
        revision_temperature: float | None = None,
        repair_prompt: str = "whole",
        reference: Literal["sibling", "solution", "both"] = "sibling",
        repaired_credit: Literal["shaped", "blame"] = "shaped",
        train_on_revision: bool = False,
        revision_is_cap: float = 2.0,
        correct_threshold: float = 1.0,
        eps: float = 1e-6,
        seed: int = 0,
    ) -> None:
        self.reference, self.repair_prompt = reference, repair_template(repair_prompt, reference)
        if repaired_credit not in ("shaped", "blame"):
            raise ValueError(f"estimator.repaired_credit must be 'shaped' or 'blame', got {repaired_credit!r}")
        if revision_is_cap <= 0:
            raise ValueError(f"estimator.revision_is_cap must be > 0, got {revision_is_cap}")
        if n_refs is not None and n_refs < 1:
            raise ValueError(f"estimator.n_refs must be >= 1 or null, got {n_refs}")
        self.shaping_coef, self.repair_bonus, self.n_refs = shaping_coef, repair_bonus, n_refs
        self.ref_policy, self.fallback_refs, self.signal = ref_policy, fallback_refs, signal
        self.normalize_std, self.mask_mode, self.unchanged_weight = normalize_std, mask_mode, unchanged_weight
        if mask_granularity == "step":
            check_delimiter("step_delimiter", step_delimiter)
        self.mask_granularity, self.step_delimiter = mask_granularity, step_delimiter
        self.max_repairs_per_group, self.revision_temperature = max_repairs_per_group, revision_temperature
        self.correct_threshold, self.eps = correct_threshold, eps
        self.train_on_revision, self.revision_is_cap = train_on_revision, revision_is_cap
        self.repaired_credit = repaired_credit
        self.seed = seed  # with each step's seed: the references and the capped pairs (``generator``)

    # -- plan: generate and verify repairs ---------------------------------------------------
    def references(self, row: int, siblings: list[int], correct: list[bool],
                   rng: random.Random | None = None) -> list[int]:
        """Reference rows for wrong sample ``row`` among its group's ``siblings`` (shuffled by ``rng``;
        None: a generator seeded with ``seed``)."""
        others = [j for j in siblings if j != row]
        (rng or random.Random(self.seed)).shuffle(others)
        right = [j for j in others if correct[j]]
        wrong = [j for j in others if not correct[j]]
        if self.ref_policy == "correct_first":
            ordered = right + wrong
        else:
            ordered = others
        if self.fallback_refs == "skip":
            ordered = [j for j in ordered if correct[j]]
        return ordered if self.n_refs is None else ordered[: self.n_refs]

    def repair_pairs(self, batch: RolloutBatch) -> list[tuple[int, int | None]]:
        """(wrong row, reference row) pairs to repair, capped per group; the reference row is None
        where the worked solution alone is shown. Random choices from the step's generator."""
        correct = [t.reward >= self.correct_threshold for t in batch.trajectories]
        pairs, rng = [], self.generator(batch)
        for rows in batch.fresh_groups().values():
            if self.reference == "solution":
                group_pairs = [(i, None) for i in rows if not correct[i]]
            else:
                group_pairs = [(i, r) for i in rows if not correct[i] for r in self.references(i, rows, correct, rng)]
            if self.max_repairs_per_group is not None and len(group_pairs) > self.max_repairs_per_group:
                group_pairs = rng.sample(group_pairs, self.max_repairs_per_group)
            pairs.extend(group_pairs)
        return pairs

    def plan(self, batch, sampler, task) -> None:
        pairs = self.repair_pairs(batch)
        trajs = batch.trajectories
        if self.mask_granularity == "step":
            for t in trajs:
                t.step_boundaries = steps(sampler.tokenizer, t, self.step_delimiter)
        if not pairs:
            batch.stats.update({f"{self.name}/revisions": 0.0, f"{self.name}/revisions_correct": 0.0})
            return
        prompts = [sampler.encode(self.repair_text(batch.groups[trajs[i].group], trajs[i],
                                                   None if r is None else trajs[r]), task.system_prompt)
                   for i, r in pairs]
        problems = [batch.groups[trajs[i].group] for i, _ in pairs]
        # one answer per repair prompt; with an environment, a repair is an episode with the tools
        samples = sampler.answer(problems, prompts, 1, temperature=self.revision_temperature,
                                 kind=GenerationKind.REVISION)
        revisions = [Trajectory.from_sample(prompt, "", s[0], group=trajs[i].group, kind=Kind.REVISION, parent=i,
                                            trained=False) for (i, _), prompt, s in zip(pairs, prompts, samples)]
        first = len(trajs)
        rewards = batch.add_scored(revisions, task)
        batch.stats[f"{self.name}/revisions"] = float(len(pairs))
        batch.stats[f"{self.name}/revisions_correct"] = float(sum(r >= self.correct_threshold for r in rewards))
        if self.train_on_revision:
            extra = rerooted_rows(batch, list(range(first, len(trajs))), self.correct_threshold)
            if self.mask_granularity == "step":
                for t in extra:
                    t.step_boundaries = steps(sampler.tokenizer, t, self.step_delimiter)
            trajs.extend(extra)

    def repair_text(self, problem: Problem, attempt: Trajectory, reference: Trajectory | None) -> str:
        """The compare-and-correct prompt x~ of ``attempt`` with ``reference`` (a sibling) and, as
        ``reference`` asks, ``problem``'s worked solution."""
        solution = problem.solution
        if self.reference != "sibling" and not solution:
            where = f" ({problem.origin})" if problem.origin else ""
            raise ValueError(f"estimator.reference={self.reference!r} shows the problem's worked solution, but "
                             f"{problem.prompt[:60]!r}{where} has none (Problem.solution): use a task with worked "
                             "solutions (ChainTask; JsonlTask with solution_field) or estimator.reference: sibling")
        return self.repair_prompt.format(problem=problem.prompt, attempt=attempt.response_text.strip(),
                                         reference=reference.response_text.strip() if reference else "",
                                         solution=(solution or "").strip())

    # -- prepare: re-score rerooted repairs under both prompts -------------------------------
    def prepare(self, batch: RolloutBatch, scorer) -> None:
        if self.train_on_revision:  # on every rank alike, rows or not (FSDP passes must match)
            batch.notes[self.REVISION_WEIGHTS] = score_rerooted(batch, scorer, self.revision_is_cap)

    # -- assign: shaped group advantage times the edit mask ----------------------------------
    def edit_mask(self, wrong: Trajectory, repairs: list[Trajectory]) -> list[float]:
        """m_t over ``wrong``'s response: 1 on tokens some successful repair changed."""
        n = len(wrong.response_ids)
        edited = [False] * n
        for rep in repairs:
            kept = levenshtein_kept(wrong.response_ids, rep.response_ids)
            edited = [e or not k for e, k in zip(edited, kept)]
        if self.mask_granularity == "step":
            edited = expand_to_steps(edited, wrong.step_boundaries)
        return [1.0 if e else self.unchanged_weight for e in edited]

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.trained_mask(batch)
        token_mask = weights.clone()
        trajs = batch.trajectories
        repairs: dict[int, list[Trajectory]] = {}
        for t in trajs:
            if t.kind == Kind.REVISION:
                repairs.setdefault(t.parent, []).append(t)
        phi = torch.zeros_like(batch.rewards)
        edited_fractions, masked = [], []
        for i, revs in repairs.items():
            if trajs[i].reward >= self.correct_threshold:
                continue
            deltas = [self.repair_bonus * float(r.reward >= self.correct_threshold) for r in revs]
            phi[i] = sum(deltas) / len(deltas) if self.signal == "mean" else max(deltas)
            fixed = [r for r in revs if r.reward >= self.correct_threshold]
            if fixed and self.mask_mode == "edited":
                m = self.edit_mask(trajs[i], fixed)
                span = batch.response_slice(i)
                token_mask[i, span] = torch.tensor(m, dtype=token_mask.dtype, device=token_mask.device)
                edited_fractions.append(sum(v == 1.0 for v in m) / max(len(m), 1))
                masked.append(i)
        shaped = batch.rewards + self.shaping_coef * phi
        rerooted = torch.tensor([t.kind == Kind.REROOTED_REVISION for t in trajs], device=shaped.device)
        rows = self.trained_rows(batch) & ~rerooted  # the group baselines: fresh samples only
        adv = torch.zeros_like(shaped)
        adv[rows] = group_normalise(shaped[rows], batch.group_ids[rows], divide_by_std=self.normalize_std, eps=self.eps)
        batch.stats[f"{self.name}/phi_mean"] = float(phi[rows].mean()) if rows.any() else 0.0
        batch.stats[f"{self.name}/repaired_samples"] = float(len(edited_fractions))
        batch.stats[f"{self.name}/edited_token_fraction"] = (  # 0 when no repair succeeded this step
            sum(edited_fractions) / len(edited_fractions) if edited_fractions else 0.0)
        batch.stats[f"{self.name}/repaired_positive"] = float(sum(adv[i] > 0 for i in masked))
        if self.repaired_credit == "blame" and masked:
            adv[masked] = adv[masked].clamp(max=0.0)
        adv = adv.unsqueeze(-1) * token_mask * weights.gt(0)
        if self.train_on_revision:
            used = revision_credit(batch, shaped, rows, batch.notes.get(self.REVISION_WEIGHTS, {}), adv, weights,
                                   normalize_std=self.normalize_std, eps=self.eps,
                                   by_step=self.mask_granularity == "step")
            batch.stats[f"{self.name}/revision_rows"] = float(rerooted.sum())
            batch.stats[f"{self.name}/revision_is_weight"] = sum(used) / len(used) if used else 0.0
        return adv, weights
