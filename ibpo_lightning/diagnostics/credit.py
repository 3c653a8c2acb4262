"""Where an estimator puts negative credit in failed answers, against where they first went wrong.

For a task that can name the first wrong step of an answer (``task.first_error(problem,
response)``: a character offset, None if the answer is right), every trained row with reward
below 1 and a located error is split at the token holding that offset. Its per-token credit is
``advantage x loss weight``; the negative part of it, summed before and from the error token on,
gives the row's *after-error share*. ``credit/after_error_share`` is the mean of that share over
rows that got any negative credit; ``credit/after_error_token_share`` is the mean share of those
rows' tokens from the error on, the value an estimator that smears one number over every token
(GRPO) gets. ``credit/after_error_auc`` ranks instead of summing: over a row's pairs (token from
the error on, token before it), the probability that the later token carries more blame (negative
credit) than the earlier one, ties counting half; 0.5 for one number on every token, 1 for blame
only from the error on. It is the mean over rows that have negative credit and tokens on both
sides. A reset row's shared prefix counts as its tokens (its credit there is zero).
"""

from __future__ import annotations

import json

from lightning.pytorch import Callback

from ibpo_lightning.estimators.segments import token_texts


def after_error_auc(credit: list[float], error: int) -> float | None:
    """P(blame on a token from ``error`` on > blame on a token before it), ties half; None when
    either side is empty. Blame is ``-credit``. Mann-Whitney U from tied ranks, O(n log n): the
    callback runs every step, and responses can be thousands of tokens long."""
    n_before, n_after = error, len(credit) - error
    if n_before <= 0 or n_after <= 0:
        return None
    order = sorted(range(len(credit)), key=lambda k: -credit[k])  # ascending blame
    ranks = [0.0] * len(credit)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and credit[order[end + 1]] == credit[order[start]]:
            end += 1
        for k in order[start : end + 1]:
            ranks[k] = (start + end) / 2 + 1  # the tied run's mean 1-based rank
        start = end + 1
    wins = sum(ranks[error:]) - n_after * (n_after + 1) / 2
    return wins / (n_before * n_after)


def row_localisation(credit: list[float], error: int) -> tuple[float, float, float | None] | None:
    """(after-error share of the blame, token share from ``error`` on, AUC) of one row's
    per-token credit; None when the row has no blame."""
    blame = [max(-c, 0.0) for c in credit]
    if not credit or sum(blame) <= 0:
        return None
    return sum(blame[error:]) / sum(blame), (len(credit) - error) / len(credit), after_error_auc(credit, error)


class CreditLocalisation(Callback):
    """Logs ``credit/*`` every step; with ``path``, appends one JSON line per located row
    (step, kind, error token, per-token credit) for plots."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def setup(self, trainer, pl_module, stage: str) -> None:
        task = getattr(trainer.datamodule, "task", None)
        if not callable(getattr(task, "first_error", None)):
            raise ValueError(f"CreditLocalisation needs a task with first_error(problem, response); "
                             f"{type(task).__name__} has none (use ibpo_lightning.tasks.ChainTask)")

    def on_fit_start(self, trainer, pl_module) -> None:
        if pl_module.parts.sampler.environment is not None:  # the host's declared parts (wiring.RunParts)
            raise ValueError("CreditLocalisation locates errors in single-turn answers; it does not read multi-turn "
                             "episodes yet: drop it or rollout.environment")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        batch = outputs["rollout"]  # the step's RolloutBatch (``PolicyModule.training_step``)
        task, tokenizer = trainer.datamodule.task, pl_module.tokenizer
        shares, token_shares, aucs, records = [], [], [], []
        for i, t in enumerate(batch.trajectories):
            if t.reward >= 1.0 or not bool(batch.loss_weights[i].any()):
                continue
            pieces = token_texts(tokenizer, t.response_ids)
            offset = task.first_error(batch.problems[t.group], "".join(pieces))
            if offset is None:
                continue
            ends, total = [], 0
            for piece in pieces:
                total += len(piece)
                ends.append(total)
            error = next((k for k, end in enumerate(ends) if end > offset), len(pieces))
            start = len(t.prompt_ids)
            credit = (batch.advantages[i] * batch.loss_weights[i])[start:start + len(pieces)].tolist()
            row = row_localisation(credit, error)
            if row is not None:
                shares.append(row[0])
                token_shares.append(row[1])
                if row[2] is not None:
                    aucs.append(row[2])
            records.append({"step": batch.policy_version, "kind": t.kind.name.lower(), "error_token": error,
                            "credit": [round(c, 5) for c in credit]})
        metrics = {"credit/rows_located": float(len(records)), "credit/rows_with_negative_credit": float(len(shares))}
        if shares:
            metrics["credit/after_error_share"] = sum(shares) / len(shares)
            metrics["credit/after_error_token_share"] = sum(token_shares) / len(token_shares)
        if aucs:
            metrics["credit/after_error_auc"] = sum(aucs) / len(aucs)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        if self.path and trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
