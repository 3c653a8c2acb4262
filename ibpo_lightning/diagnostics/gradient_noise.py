"""How noisy an estimator's policy gradient is, measured per prompt group on the live batch.

Each prompt group of a rollout batch yields one gradient ``g_i``: the policy-gradient loss of that
group's trained rows alone (its own normaliser, no KL term, on-policy ratio 1). Over the ``n``
groups of a step, with ``g`` their mean:

* ``grad/signal``           = ||g||^2
* ``grad/noise``            = sum_i ||g_i - g||^2 / (n - 1), the trace of the per-group covariance
* ``grad/noise_to_signal``  = noise / signal: McCandlish et al.'s (2018) simple noise scale in
  units of groups, the batch size at which the mean's noise equals its signal (lower is better)
* ``grad/snr``              = n * signal / noise, the signal-to-noise ratio of the step's gradient

A group whose rows all carry zero advantage contributes ``g_i = 0`` and counts: it is part of what
the estimator hands the optimizer. The same measurement serves every estimator, so their values
at one step, one seed (same policy, same fresh samples) compare directly.
"""

from __future__ import annotations

import time

import torch


def group_gradient_noise(scorer, loss_fn, batch, rows: list[int]) -> dict[str, float]:
    """Gradient noise statistics of ``batch`` over the groups of ``rows`` (see module docstring),
    scored through ``scorer`` with the policy-gradient loss ``loss_fn``.

    Leaves the policy's ``.grad`` cleared; needs at least two groups. Also returns
    ``time/grad_noise``, the seconds it took.
    """
    start = time.perf_counter()
    params = [p for p in scorer.model("policy").parameters() if p.requires_grad]
    groups = batch.groups_of(rows)
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    square_sum = 0.0
    for group in groups:
        for p in params:
            p.grad = None
        weights = batch.loss_weights[group]
        if bool(batch.advantages[group].any()):
            logp, _, width = scorer.logprobs(batch, group)
            w, adv = weights[:, :width], batch.advantages[group, :width]
            loss, _ = loss_fn(logp, logp.detach(), adv, w, loss_fn.normaliser(weights))
            loss.backward()
        for p, acc in zip(params, total):
            if p.grad is not None:
                acc.add_(p.grad.float())
                square_sum += float(p.grad.double().pow(2).sum())
    for p in params:
        p.grad = None
    n = len(groups)
    if n < 2:
        return {}
    signal = sum(float(acc.double().pow(2).sum()) for acc in total) / n**2
    noise = (square_sum - n * signal) / (n - 1)
    return {"grad/signal": signal, "grad/noise": noise,
            "grad/noise_to_signal": noise / max(signal, 1e-30), "grad/snr": n * signal / max(noise, 1e-30),
            "time/grad_noise": time.perf_counter() - start}
