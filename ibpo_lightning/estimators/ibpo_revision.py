"""IBPO's ``train_on_revision`` reading: verified repairs trained on, under the task prompt.

The notes read IBPO's "token-level credit only to the edited tokens" two ways
(``/shared/reference/estimators.md`` §1.5 item 6). The default (``ibpo.py``) puts the wrong
sample's negative advantage on the tokens a repair changed. This module builds the other
reading: each verified repair y_hat of a wrong sample tau_i, sampled under the
compare-and-correct prompt x~, joins the batch as an extra row of kind ``REROOTED_REVISION``
answering the task prompt x, with positive credit only on the tokens the repair wrote:

    e_t   = 1[y_hat_t is not matched by the Levenshtein alignment of tau_i to y_hat]
            (substituted or inserted tokens; widened to whole steps with ``mask_granularity: step``)
    A_rev = max(0, (r(y_hat) - mean_g R') / (std_g R' + eps))   (no std with ``normalize_std`` off)
    w_t   = min(pi_theta(y_hat_t | x, y_hat_<t) / pi_theta(y_hat_t | x~, y_hat_<t), cap), detached
    A_t   = e_t * w_t * A_rev,   loss weight e_t

mean_g and std_g are those of the group's fresh rows (the row never enters its group's baseline
and, not being fresh, never the reward or accuracy metrics). A_rev is the advantage a sample
with the repair's reward gets against that baseline: a correct sibling's advantage when the
group has one, and still defined when it has none (repairs from wrong references).

Everything here is reconstructed [INF]; the paper says only that credit goes to edited tokens.
The importance weight is per token and truncated (as ``model.update.tis`` corrects the engine), not
a sequence ratio: x~ holds the attempt and the reference, so y_hat is far likelier under x~ than
under x, and a product over the whole response would vanish and drop the row. Both log-probs
are the trainer's, from one no-grad pass through the scorer in ``prepare``, at the scorer's
temperature (the rollout's) also when repairs are sampled at ``revision_temperature``: w_t
corrects the prompt, not the temperature. The row's engine log-probs are then set to
log pi_engine(y_hat_t | x~) + log pi_theta(y_hat_t | x) - log pi_theta(y_hat_t | x~): the
engine/trainer mismatch metric and ``model.update.tis`` see only the sampling mismatch of y_hat as it
was drawn, and the prompt shift is corrected by w_t alone.
"""

from __future__ import annotations

import dataclasses

import torch

from ibpo_lightning.estimators.functional import expand_to_steps, group_mean_std, levenshtein_matches
from ibpo_lightning.losses import truncated_importance_weight
from ibpo_lightning.types import Kind, RolloutBatch, Trajectory


def rerooted_rows(batch: RolloutBatch, revisions: list[int], threshold: float) -> list[Trajectory]:
    """One trained row per verified repair among the rows ``revisions``: the repair's response
    (and sampling log-probs, until ``prepare``) under its wrong parent's task prompt;
    ``parent`` is the repair's row."""
    trajs, out = batch.trajectories, []
    for s in revisions:
        rev = trajs[s]
        if rev.reward < threshold:
            continue
        wrong = trajs[rev.parent]
        out.append(dataclasses.replace(
            rev, prompt_ids=list(wrong.prompt_ids), prompt_text=wrong.prompt_text, response_ids=list(rev.response_ids),
            logprobs=list(rev.logprobs), kind=Kind.REROOTED_REVISION, parent=s, prefix_len=0, trained=True))
    return out


def score_rerooted(batch: RolloutBatch, scorer, cap: float) -> dict[int, torch.Tensor]:
    """w_t of every rerooted row (row -> [response length]); moves its engine log-probs onto x.

    The scorer is called on every rank, with or without rows: under FSDP every rank must run
    the same number of passes."""
    rows = batch.rows(lambda t: t.kind == Kind.REROOTED_REVISION)
    sources = [batch.trajectories[e].parent for e in rows]
    logp = scorer.full(batch, rows + sources)
    weights = {}
    for e, s in zip(rows, sources):
        on_task, on_repair = logp[e, batch.response_slice(e)], logp[s, batch.response_slice(s)]
        weights[e] = truncated_importance_weight(on_task, on_repair, cap)
        engine = batch.engine_logprobs
        engine[e, batch.response_slice(e)] = engine[s, batch.response_slice(s)] + on_task - on_repair
    return weights


def edited_tokens(wrong: Trajectory, repair: Trajectory, by_step: bool) -> list[bool]:
    """e_t over ``repair``'s response: the tokens an edit of ``wrong`` into it wrote."""
    edited = [not m for m in levenshtein_matches(wrong.response_ids, repair.response_ids)[1]]
    return expand_to_steps(edited, repair.step_boundaries) if by_step else edited


def revision_credit(batch: RolloutBatch, shaped: torch.Tensor, base: torch.Tensor, is_weights: dict[int, torch.Tensor],
                    adv: torch.Tensor, loss_weights: torch.Tensor, *, normalize_std: bool, eps: float,
                    by_step: bool) -> list[float]:
    """Write A_t and e_t of every rerooted row into ``adv`` and ``loss_weights`` [N, L] (in place).

    ``shaped`` [N] holds R', ``base`` [N] marks the rows of the group baselines. Returns the
    w_t of the edited tokens (for the diagnostics)."""
    trajs = batch.trajectories
    mean, std = group_mean_std(shaped[base], batch.group_ids[base])
    baseline = {g: (float(m), float(s)) for g, m, s in zip(batch.group_ids[base].tolist(), mean, std)}
    used: list[float] = []
    for e in batch.rows(lambda t: t.kind == Kind.REROOTED_REVISION):
        if e not in is_weights:
            raise ValueError(f"IBPO: rerooted row {e} has no importance weight; prepare() did not score this batch")
        row, (m, s) = trajs[e], baseline[trajs[e].group]
        centred = row.reward - m
        value = max(0.0, centred / (s + eps) if normalize_std else centred)
        mask = torch.tensor(edited_tokens(trajs[trajs[row.parent].parent], row, by_step),
                            dtype=adv.dtype, device=adv.device)
        span = batch.response_slice(e)
        loss_weights[e] = 0.0
        loss_weights[e, span] = mask
        adv[e] = 0.0
        adv[e, span] = value * mask * is_weights[e].to(adv.dtype)
        used += is_weights[e][mask > 0].tolist()
    return used
