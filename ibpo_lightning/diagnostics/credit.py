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
sides. A reset row's shared prefix counts as its tokens (its credit there is zero). In a
multi-turn episode only the model's tokens count, and the error is found in its own text
(``model_text``: tool calls and the environment's turns left out).
"""

from __future__ import annotations

import json
import re

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


_CALL = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


def model_text(tokenizer, t) -> tuple[list[int], str, list[int]]:
    """The response tokens the model wrote, the text ``first_error`` reads, and for each character
    of it the index (into those tokens) of the token it belongs to. A single-turn answer is its
    tokens' text. In a multi-turn episode the environment's tokens are left out, and so are the
    model's tool calls and special tokens, so that its own lines read as a single-turn answer."""
    spans = t.env_spans
    tokens = [k for k in range(len(t.response_ids)) if not any(a <= k < b for a, b in spans)]
    pieces = token_texts(tokenizer, [t.response_ids[k] for k in tokens])
    owner = [k for k, piece in enumerate(pieces) for _ in piece]
    text = "".join(pieces)
    if not t.turn_ends:
        return tokens, text, owner
    hidden = {c for m in _CALL.finditer(text) for c in range(m.start(), m.end())}
    for special in tokenizer.all_special_tokens:
        at = text.find(special)
        while at >= 0:
            hidden.update(range(at, at + len(special)))
            at = text.find(special, at + 1)
    keep = [c for c in range(len(text)) if c not in hidden]
    return tokens, "".join(text[c] for c in keep), [owner[c] for c in keep]


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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        batch = outputs["rollout"]  # the step's RolloutBatch (``PolicyModule.training_step``)
        task, tokenizer = trainer.datamodule.task, pl_module.tokenizer
        shares, token_shares, aucs, records = [], [], [], []
        for i, t in enumerate(batch.trajectories):
            if t.reward >= 1.0 or not bool(batch.loss_weights[i].any()):
                continue
            tokens, text, owner = model_text(tokenizer, t)
            offset = task.first_error(batch.problems[t.group], text)
            if offset is None:
                continue
            error = owner[offset] if offset < len(owner) else len(tokens)
            start = len(t.prompt_ids)
            row_credit = (batch.advantages[i] * batch.loss_weights[i])[start:start + len(t.response_ids)].tolist()
            credit = [row_credit[k] for k in tokens]
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
