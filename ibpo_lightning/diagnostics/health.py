"""Run health: a warning, once and in one line naming the knob, when a run cannot learn or is failing.

The checks read what every RL step logs (``trainer.callback_metrics``, synced across ranks, so
every rank reaches the same verdict at the same step) and the sampler's settings:

- ``temperature``: sampling at temperature 0 (every sample of a group the same, every
  group-relative advantage 0), found before the first step;
- ``truncation``: ``train/truncated_fraction`` above ``truncation`` while the cut samples score
  under ``truncated_reward`` on average (``train/truncated_reward``), for ``patience`` steps: nearly
  every answer cut and scoring nothing leaves no signal (the quickstart starts with half its
  answers cut and scoring 0.03, and learns to answer within the budget);
- ``zero_variance``: ``train/zero_variance_groups`` at or above ``zero_variance`` for
  ``patience`` steps (nothing to learn from such groups);
- ``entropy``: ``train/entropy`` under ``entropy_floor``, or under ``entropy_ratio`` times its
  mean over the first ``baseline_steps`` steps, for ``patience`` steps (entropy collapse);
- ``mismatch``: ``rollout/logprob_diff_mean`` (engine against trainer) above ``mismatch_floor``
  and above ``mismatch_ratio`` times its early mean, for ``patience`` steps (drift);
- ``tool_calls``: ``episode/malformed_share`` (multi-turn episodes) at or above ``malformed`` for
  ``patience`` steps: most of the model's tool calls cannot be parsed or run, so its episodes are
  spent on error messages;
- ``constant_reward``: ``train/reward_mean`` unchanged with ``train/reward_std`` 0 for
  ``constant_steps`` steps (a reward that answers the same whatever is sampled).

With ``stop`` each of them stops the run (:class:`RunHealthError`) instead of warning. The
state (histories, what was said) is saved in checkpoints, so a resumed run neither repeats a
warning nor forgets the steps that led to one.
"""

from __future__ import annotations

import warnings

from lightning.pytorch import Callback


class RunHealthWarning(UserWarning):
    """A run that cannot learn, or is failing."""


class RunHealthError(RuntimeError):
    """A run-health check failed with ``health.stop`` on."""


class RunHealth(Callback):
    """Warns (or, with ``stop``, stops) when a run cannot learn or is failing; see the module.

    Args:
        enabled: run the checks at all.
        stop: stop the run at the first failed check instead of warning.
        patience: consecutive steps a condition must hold before it is reported.
        truncation: largest share of truncated samples before a warning ...
        truncated_reward: ... when the truncated samples' mean reward is under this.
        zero_variance: share of groups with one reward for all their samples that counts as none
            left to learn from.
        entropy_floor: mean token entropy (nats) under which the policy counts as collapsed.
        entropy_ratio: ... or this share of its early mean.
        mismatch_floor: mean |log-prob difference| (engine against trainer) that is always fine.
        mismatch_ratio: growth over its early mean that counts as drift.
        malformed: share of malformed tool calls (multi-turn episodes) that counts as failing.
        constant_steps: steps with the same reward and no spread before the reward counts as constant.
        baseline_steps: first steps whose mean is the early value of entropy and mismatch.
    """

    def __init__(self, enabled: bool = True, stop: bool = False, patience: int = 3, truncation: float = 0.9,
                 truncated_reward: float = 0.1, zero_variance: float = 0.95, entropy_floor: float = 0.02,
                 entropy_ratio: float = 0.05, mismatch_floor: float = 0.05, mismatch_ratio: float = 4.0,
                 constant_steps: int = 10, baseline_steps: int = 3, malformed: float = 0.5) -> None:
        if patience < 1 or constant_steps < 2 or baseline_steps < 1:
            raise ValueError("health.patience and health.baseline_steps must be >= 1, health.constant_steps >= 2")
        self.enabled, self.stop, self.patience = enabled, stop, patience
        self.truncation, self.truncated_reward, self.zero_variance = truncation, truncated_reward, zero_variance
        self.entropy_floor, self.entropy_ratio = entropy_floor, entropy_ratio
        self.mismatch_floor, self.mismatch_ratio = mismatch_floor, mismatch_ratio
        self.constant_steps, self.baseline_steps, self.malformed = constant_steps, baseline_steps, malformed
        self.state: dict = {"said": [], "streak": {}, "early": {}, "rewards": []}

    # -- checks -------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        sampler = pl_module.parts.sampler
        if sampler.temperature == 0:
            self._report(trainer, "temperature", "rollout.temperature is 0: every sample of a group is the same, so "
                         "every group-relative advantage is 0 and the run cannot learn; sample at a temperature "
                         "above 0 (e.g. --rollout.temperature 1.0)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.enabled:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "rollout/", "episode/"))}
        step, cap = trainer.global_step, pl_module.parts.sampler.max_new_tokens
        truncated, cut_reward = m.get("train/truncated_fraction", 0.0), m.get("train/truncated_reward", 0.0)
        if self._held("truncation", truncated > self.truncation and cut_reward < self.truncated_reward):
            self._report(trainer, "truncation", f"{100 * truncated:.0f}% of the samples stopped at "
                         f"rollout.max_new_tokens={cap} for {self.patience} steps, scoring {cut_reward:.2g} on "
                         "average: cut answers score nothing; raise --rollout.max_new_tokens or ask for shorter "
                         "answers")
        share = m.get("train/zero_variance_groups", 0.0)
        if self._held("zero_variance", share >= self.zero_variance):
            self._report(trainer, "zero_variance", f"{100 * share:.0f}% of the groups gave every sample the same "
                         f"reward for {self.patience} steps: they carry no group-relative signal; check the "
                         "reward (train/reward_mean), raise --rollout.group_size, or draw more groups with "
                         "--rollout.dynamic_sampling.max_rounds 10")
        malformed = m.get("episode/malformed_share", 0.0)
        if self._held("tool_calls", malformed >= self.malformed):
            self._report(trainer, "tool_calls", f"{100 * malformed:.0f}% of the model's tool calls could not be "
                         f"parsed or run for {self.patience} steps: its episodes are spent on error messages; "
                         "check that the system prompt shows the call format (docs/environments.md) or teach it "
                         "with a cold start (ibpo sft with rollout.environment)")
        self._entropy(trainer, m)
        self._mismatch(trainer, m)
        self._constant_reward(trainer, m, step)

    def _entropy(self, trainer, m: dict) -> None:
        if "train/entropy" not in m:
            return
        entropy, early = m["train/entropy"], self._early("entropy", m["train/entropy"])
        low = entropy < self.entropy_floor or (early is not None and entropy < self.entropy_ratio * early)
        if self._held("entropy", low):
            self._report(trainer, "entropy", f"the policy's entropy fell to {entropy:.3g} nats (from "
                         f"{early if early is not None else entropy:.3g}) for {self.patience} steps: its samples "
                         "have collapsed to near-determinism and will stop exploring; lower the learning rate "
                         "(--model.optimizer.init_args.lr) or raise rollout.temperature")

    def _mismatch(self, trainer, m: dict) -> None:
        if "rollout/logprob_diff_mean" not in m:
            return
        diff, early = m["rollout/logprob_diff_mean"], self._early("mismatch", m["rollout/logprob_diff_mean"])
        drift = early is not None and diff > max(self.mismatch_floor, self.mismatch_ratio * early)
        if self._held("mismatch", drift):
            self._report(trainer, "mismatch", f"the engine's and the trainer's log-probs drift apart (mean |diff| "
                         f"{early:.3g} at first, {diff:.3g} now, for {self.patience} steps): the engine may miss "
                         "weight syncs or sample in another precision; check rollout.engine and trainer.precision, "
                         "or correct for it with --model.update.tis true")

    def _constant_reward(self, trainer, m: dict, step: int) -> None:
        if "train/reward_mean" not in m:
            return
        rewards = self.state["rewards"]
        if m.get("train/reward_std", 0.0) == 0.0 and (not rewards or rewards[-1] == m["train/reward_mean"]):
            rewards.append(m["train/reward_mean"])
        else:
            rewards[:] = [m["train/reward_mean"]] if m.get("train/reward_std", 0.0) == 0.0 else []
        if len(rewards) >= self.constant_steps:
            self._report(trainer, "constant_reward", f"train/reward_mean has been exactly {rewards[-1]:g} with no "
                         f"spread for {len(rewards)} steps (up to step {step}): the reward looks constant; check the "
                         "task's reward and answers (a wrong answer field, a format the reward never matches)")

    # -- bookkeeping ----------------------------------------------------------------------------
    def _held(self, name: str, condition: bool) -> bool:
        """Whether ``condition`` has now held for ``patience`` consecutive steps."""
        streak = self.state["streak"]
        streak[name] = streak.get(name, 0) + 1 if condition else 0
        return streak[name] >= self.patience

    def _early(self, name: str, value: float) -> float | None:
        """The mean of the first ``baseline_steps`` values (None until there are that many)."""
        seen = self.state["early"].setdefault(name, [])
        if len(seen) < self.baseline_steps:
            seen.append(value)
            return None
        return sum(seen) / len(seen)

    def _report(self, trainer, name: str, message: str) -> None:
        if name in self.state["said"]:
            return
        self.state["said"].append(name)
        if self.stop:
            raise RunHealthError(f"run health ({name}, health.stop is on): {message}")
        if trainer.is_global_zero:
            warnings.warn(f"run health ({name}): {message}", RunHealthWarning, stacklevel=2)

    def state_dict(self) -> dict:
        return {"state": self.state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.state = state_dict.get("state", self.state)
