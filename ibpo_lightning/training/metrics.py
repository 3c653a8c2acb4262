"""What one RL step logs about its batch: rewards of the fresh samples, lengths, advantages."""

from __future__ import annotations

import torch

from ibpo_lightning.types import Kind, RolloutBatch


def batch_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Reward, accuracy and length (model-written tokens) of the fresh samples; the share of groups whose samples all got
    one reward (of the groups drawn, under dynamic sampling, which drops them); statistics of the
    advantages on the tokens that carry loss weight; and the batch's own diagnostics
    (``batch.stats``)."""
    fresh = batch.rows(lambda t: t.kind == Kind.FRESH)
    rewards = batch.rewards[fresh]
    lengths = torch.tensor([batch.trajectories[i].model_tokens for i in fresh], dtype=torch.float32)
    mask = batch.loss_weights > 0
    adv = batch.advantages[mask] if mask.any() else torch.zeros(1)
    metrics = {
        "train/reward_mean": float(rewards.mean()),
        "train/reward_std": float(rewards.std()) if len(fresh) > 1 else 0.0,
        "train/accuracy": float((rewards >= 1.0).float().mean()),
        "train/response_length": float(lengths.mean()),
        "train/truncated_fraction": sum(not batch.trajectories[i].finished for i in fresh) / len(fresh),
        "train/truncated_reward": _mean([float(batch.rewards[i]) for i in fresh if not batch.trajectories[i].finished]),
        "train/adv_mean": float(adv.mean()),
        "train/adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "train/adv_abs_mean": float(adv.abs().mean()),
        "train/adv_zero_fraction": float((adv == 0).float().mean()),
    }
    metrics["train/zero_variance_groups"] = _zero_variance_share(batch)
    metrics.update(batch.stats)
    return metrics


def _zero_variance_share(batch: RolloutBatch) -> float:
    """Share of groups whose fresh samples all got one reward; under dynamic sampling, which
    drops those groups, the share of the groups it drew."""
    drawn = batch.stats.get("dynamic/groups_drawn")
    if drawn:
        return 1.0 - batch.stats["dynamic/groups_kept"] / drawn
    groups = batch.fresh_groups()
    uniform = sum(len({float(batch.rewards[i]) for i in rows}) == 1 for rows in groups.values())
    return uniform / max(len(groups), 1)


def _mean(values: list[float]) -> float:
    """Their mean; 0 for none (a metric must have a value on every rank and step)."""
    return sum(values) / len(values) if values else 0.0


def episode_metrics(counts: dict[str, int]) -> dict[str, float]:
    """``episode/*`` of a step's multi-turn episodes (``Sampler.episode_counts``); none without."""
    episodes = counts.get("episodes", 0)
    if not episodes:
        return {}
    calls = counts["tool_calls"]
    return {"episode/turns": counts["turns"] / episodes, "episode/tool_calls": calls / episodes,
            "episode/malformed_share": counts["malformed_calls"] / calls if calls else 0.0,
            "tokens/observation": float(counts["observation_tokens"])}
