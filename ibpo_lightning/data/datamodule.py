"""A ``LightningDataModule`` that streams each RL step's problems from a checkpointed prompt order.

Each item of the training stream is the list of problems of one RL step on this rank; the module's
``training_step`` samples, scores and trains on them (``step.py``), so every batch is sampled by
the policy that trains on it. The stream has a length, so Lightning does not fetch an item ahead
of the step: the prompt order a checkpoint saves is exactly the one the next step continues.
Dynamic sampling draws its refills from the same order (``draw_problems``). Before the first step
the policy module has every prompt a stage will use checked against the context
(``fit_prompts``, ``data/lengths.py``).
"""

from __future__ import annotations

import random

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from ibpo_lightning.data.lengths import CheckedEvaluation, Fits
from ibpo_lightning.tasks.base import Problem, Task


class PromptSampler:
    """Endless shuffled passes over the training problems; its position is checkpointed."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch, self.offset = size, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.offset == self.size:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.offset])
            self.offset += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation()


class ProblemStream(IterableDataset):
    """Yields ``steps`` lists of problems, each drawn when its step starts."""

    def __init__(self, datamodule: "RLDataModule") -> None:
        self.dm = datamodule

    def __len__(self) -> int:
        return self.dm.steps

    def __iter__(self):
        for _ in range(self.dm.steps):
            yield self.dm.draw_problems(self.dm.prompts_per_step)


class RLDataModule(CheckedEvaluation, LightningDataModule):
    """Streams each RL step's training problems, and held-out problems for validation.

    Args:
        task: where problems and the reward come from.
        prompts_per_step: problems per RL step and data-parallel rank (each gets
            ``rollout.group_size`` samples); ranks take turns along one shared prompt order.
        steps: RL steps per epoch (the length of the training stream).
        val_batch_size: held-out problems per validation generate call.
        seed: seed of the prompt order.
        drop_long_prompts: leave out (with one warning) problems whose prompt plus the response
            budget does not fit the model's context, instead of failing at start-up naming them.
    """

    def __init__(self, task: Task, prompts_per_step: int = 8, steps: int = 20,
                 val_batch_size: int = 64, seed: int = 0, drop_long_prompts: bool = False) -> None:
        super().__init__()
        if prompts_per_step < 1:
            raise ValueError(f"data.prompts_per_step must be >= 1, got {prompts_per_step}")
        if steps < 1:
            raise ValueError(f"data.steps must be >= 1, got {steps}")
        self.task, self.prompts_per_step, self.steps = task, prompts_per_step, steps
        self.val_batch_size, self.seed, self.drop_long_prompts = val_batch_size, seed, drop_long_prompts
        self.train_problems: list[Problem] = list(task.train_problems())
        self.order = PromptSampler(len(self.train_problems), seed)

    def fit_prompts(self, stage: str, fits: Fits) -> None:
        """Check the prompts ``stage`` will use before its first step (before a checkpoint restores
        the prompt order): ``fits`` keeps the problems that fit or names those that do not."""
        if stage == "fit":
            self.train_problems = fits(self.task.train_problems(), "training", self.drop_long_prompts)
            self.order = PromptSampler(len(self.train_problems), self.seed)
        self.fit_evaluation_prompts(stage, fits)

    def teardown(self, stage: str) -> None:
        """Stop the reward's worker processes (a later stage starts them again on first use)."""
        self.task.close()

    def draw_problems(self, k: int) -> list[Problem]:
        """This rank's share of the next ``k`` training problems of the checkpointed prompt order
        (each step's, and the refills of dynamic sampling)."""
        problems = self.train_problems
        replicas, rank = self._data_parallel()
        return [problems[i] for i in self.order.take(k * replicas)[rank::replicas]]

    def _data_parallel(self) -> tuple[int, int]:
        """(data-parallel ranks, this rank); every rank draws the same global prompts and keeps its share."""
        kwargs = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) if self.trainer else None
        return (kwargs["num_replicas"], kwargs["rank"]) if kwargs else (1, 0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(ProblemStream(self), batch_size=None, num_workers=0, collate_fn=list)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.evaluation_problems("held-out"), batch_size=self.val_batch_size, num_workers=0, collate_fn=list)

    def test_dataloader(self) -> DataLoader:
        """The task's test split where it has one, else its held-out split."""
        return DataLoader(self.evaluation_problems("test"), batch_size=self.val_batch_size, num_workers=0, collate_fn=list)

    def state_dict(self) -> dict:
        return {"sampler": self.order.state_dict()}  # key kept: checkpoints of earlier versions load

    def load_state_dict(self, state_dict: dict) -> None:
        self.order.load_state_dict(state_dict["sampler"])
