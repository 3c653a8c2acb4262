"""Hand-built rollout batches for unit tests of estimator math."""

from ibpo_lightning.tasks import ArithmeticTask
from ibpo_lightning.types import Kind, RolloutBatch, Trajectory


def traj(group, reward, response=(5, 6, 7), prompt=(1, 2), **kw) -> Trajectory:
    response = list(response)
    return Trajectory(prompt_ids=list(prompt), response_ids=response, logprobs=[-1.0] * len(response),
                      prompt_text="q", response_text=" ".join(map(str, response)), group=group,
                      reward=reward, **kw)


def batch_of(trajs, n_groups=None) -> RolloutBatch:
    n_groups = n_groups or (max(t.group for t in trajs) + 1)
    batch = RolloutBatch(list(trajs), policy_version=0, problems=[f"p{g}" for g in range(n_groups)],
                         answers=["1"] * n_groups)
    return batch.collate(pad_id=0)


def revision(parent, group, reward, response) -> Trajectory:
    return traj(group, reward, response, prompt=(9, 9, 9), kind=Kind.REVISION, parent=parent, trained=False)



class ParityTask(ArithmeticTask):
    """Arithmetic prompts with a toy reward (even-length completions score 1), so that a tiny random
    model sees reward variance and its policy moves; for tests of the loop, not of a reward."""

    def score(self, completions, answers):
        return [float(len(c) % 2 == 0) for c in completions]
