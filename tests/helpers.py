"""Hand-built rollout batches for unit tests of estimator math."""

import hashlib
import json
import os

from lightning.pytorch import Callback

from ibpo_lightning.models.sharding import full_tensors
from ibpo_lightning.rollout import HFEngine
from ibpo_lightning.rollout.callback import RolloutCallback
from ibpo_lightning.rollout.engine import Sample
from ibpo_lightning.tasks import ArithmeticTask, Problem
from ibpo_lightning.types import Kind, RolloutBatch, Trajectory


def adamw(lr: float):
    """The optimizer argument of ``PolicyModule``: AdamW at ``lr``, no weight decay."""
    import torch

    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def traj(group, reward, response=(5, 6, 7), prompt=(1, 2), **kw) -> Trajectory:
    response = list(response)
    return Trajectory(prompt_ids=list(prompt), response_ids=response, logprobs=[-1.0] * len(response),
                      prompt_text="q", response_text=" ".join(map(str, response)), group=group,
                      reward=reward, **kw)


def batch_of(trajs, n_groups=None) -> RolloutBatch:
    n_groups = n_groups or (max(t.group for t in trajs) + 1)
    batch = RolloutBatch(list(trajs), policy_version=0, groups=[Problem(f"p{g}", "1") for g in range(n_groups)])
    return batch.collate(pad_id=0)


def revision(parent, group, reward, response) -> Trajectory:
    return traj(group, reward, response, prompt=(9, 9, 9), kind=Kind.REVISION, parent=parent, trained=False)



class ParityTask(ArithmeticTask):
    """Arithmetic prompts with a toy reward (even-length completions score 1), so that a tiny random
    model sees reward variance and its policy moves; for tests of the loop, not of a reward."""

    def score(self, completions, answers):
        return [float(len(c) % 2 == 0) for c in completions]


class BatchRecorder(Callback):
    """Appends what each training step saw and computed to a JSONL file (flushed at once, so a
    killed run keeps every finished step): the policy version, the prompts, a digest of the
    sampled responses, the reward mean, the policy-gradient loss, the gradient norm, and a
    checksum of the updated weights."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        batch = outputs["rollout"]
        responses = [t.response_ids for t in batch.trajectories]
        row = {"version": batch.policy_version, "problems": batch.problems,
               "responses": hashlib.sha1(json.dumps(responses).encode()).hexdigest(),
               "reward": float(trainer.callback_metrics["train/reward_mean"]),  # over ranks
               "loss": float(trainer.callback_metrics["train/pg_loss"]),
               "grad_norm": float(trainer.callback_metrics["train/grad_norm"]),
               "entropy": float(trainer.callback_metrics["train/entropy"]),
               "entropy_coef": float(trainer.callback_metrics["train/entropy_coef"]),
               "weights": _checksum(pl_module.policy.named_parameters())}  # a collective under FSDP
        self._write(trainer, row)

    def on_train_end(self, trainer, pl_module) -> None:
        engine = next(cb for cb in trainer.callbacks if isinstance(cb, RolloutCallback)).engine
        if getattr(engine, "model", None) is not None:  # the HF engine: its weights vs the trainer's
            theirs = dict(engine.model.named_parameters())
            diff = max(float((t - theirs[name]).abs().max())
                       for name, t in full_tensors(pl_module.policy.named_parameters()))
            self._write(trainer, {"engine_max_diff": diff, "engine_shares_weights": engine.shares_weights})

    def _write(self, trainer, row: dict) -> None:
        if not trainer.is_global_zero:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _checksum(named) -> float:
    return sum(float(t.double().abs().sum()) for _, t in full_tensors(named))


class ScriptedEngine(HFEngine):
    """The HF engine (binding and weight sync included) answering with scripted tokens that depend
    only on the prompt, so that runs under different strategies train on identical batches."""

    def generate(self, prompts, n, *, max_new_tokens, temperature, top_p=1.0, seed=None):
        out = []
        for prompt in prompts:
            base = sum(prompt)
            group = []
            for j in range(n):
                ids = [100 + (base * 7 + 31 * j + 11 * k) % 900 for k in range(min(max_new_tokens, 2 + (base + j) % 5))]
                group.append(Sample(token_ids=ids, logprobs=[-1.0] * len(ids),
                                    text=self.tokenizer.decode(ids), finished=True))
            out.append(group)
        return out


class VersionLog(Callback):
    """Appends the policy version at the start of every training step of this run to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{pl_module.policy_version}\n")


class SigtermAt(Callback):
    """Sends this process SIGTERM (or ``signal``, e.g. 2 for Ctrl-C's SIGINT) at the start of
    training step ``step`` (as a cluster, or a user, would)."""

    def __init__(self, step: int = 1, signal: int = 15) -> None:
        self.step, self.signal = step, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.step:
            os.kill(os.getpid(), self.signal)


class KillInsideSave(Callback):
    """SIGKILLs the run's whole process group inside the checkpoint save that follows training step
    ``step``: once ``torch.distributed.checkpoint.save`` has written the shards (the first rank
    back kills every rank), before the save returns. Run it in its own session."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 != self.step:  # ModelCheckpoint, always the last callback, saves next
            return
        import signal

        import torch.distributed.checkpoint as dcp

        real = dcp.save

        def save_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os.killpg(os.getpgrp(), signal.SIGKILL)

        dcp.save = save_then_die


class WeightsAtStart(Callback):
    """Writes a checksum of the policy's weights when training starts (before any update) to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        with torch.no_grad():
            checksum = _checksum(pl_module.policy.named_parameters())  # a collective under FSDP
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                f.write(f"{checksum!r}\n")


class LastRollout(Callback):
    """Keeps the last training step's ``RolloutBatch`` (``outputs["rollout"]``) as ``batch``."""

    def __init__(self) -> None:
        self.batch = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch = outputs["rollout"]


class WeightMotion(Callback):
    """Whether training changed the policy's weights: checksums at the start and the end of ``fit``
    (collectives under FSDP2, so every rank computes them); ``moved`` is the verdict."""

    def __init__(self) -> None:
        self.before = self.after = None

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        with torch.no_grad():
            self.before = _checksum(pl_module.policy.named_parameters())

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        with torch.no_grad():
            self.after = _checksum(pl_module.policy.named_parameters())

    @property
    def moved(self) -> bool:
        return self.before is not None and self.after is not None and self.before != self.after


class ScriptedToolEngine(HFEngine):
    """The HF engine answering by script in the calculator's format: in a new episode, sample j of a
    prompt calls the calculator on ``<prompt sum % 50> + <j>`` when j is even and answers
    ``Answer: <j>`` when odd; after reading a result it answers ``Answer: <result>``. Depends only on
    the context, so every strategy trains on identical episodes."""

    def generate(self, prompts, n, *, max_new_tokens, temperature, top_p=1.0, seed=None):
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        out = []
        for prompt, budget in zip(prompts, budgets):
            context = self.tokenizer.decode(prompt)
            group = []
            for j in range(n):
                if "<|im_start|>tool" in context:
                    text = "Answer: " + context.rsplit("<|im_start|>tool\n", 1)[1].split("<|im_end|>")[0]
                elif j % 2 == 0:
                    expression = f"{sum(prompt) % 50} + {j}"
                    text = '<tool_call>{"name": "calculator", "arguments": {"expression": "%s"}}</tool_call>' % expression
                else:
                    text = f"Answer: {j}"
                ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                group.append(Sample(token_ids=ids[:budget], logprobs=[-1.0] * len(ids[:budget]), text=text,
                                    finished=len(ids) <= budget))
            out.append(group)
        return out
