"""Problems from a JSONL file or a Hugging Face Hub dataset (GSM8K, MATH, ...)."""

from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from pathlib import Path

from ibpo_lightning.rewards.answer import number_reward
from ibpo_lightning.rewards.math_verify import MathVerifyReward
from ibpo_lightning.tasks.base import Problem, Task

DEFAULT_SYSTEM_PROMPT = "Solve the problem step by step. Put the final answer in \\boxed{}."
_LOCAL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def _is_local(path: str) -> bool:
    return path.endswith(_LOCAL_SUFFIXES) or path.startswith(("/", ".", "~")) or Path(path).exists()


def _line_number(path: Path, record: int) -> int:
    """1-based line of the ``record``-th (0-based) non-blank line of a JSONL file."""
    opener = gzip.open if path.suffix == ".gz" else open
    seen = -1
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            seen += bool(line.strip())
            if seen == record:
                return number
    return record + 1


class JsonlTask(Task):
    """Problems from local JSONL (``.jsonl``, ``.jsonl.gz``) or a Hub dataset, checked at start.

    Every row must have a non-empty prompt and answer field; otherwise construction fails with
    an error naming the file, the row and the field. Held-out problems never appear in train
    (train rows whose prompt equals a held-out prompt are dropped).

    Args:
        train_path: Local JSONL file, or a Hugging Face Hub dataset id, of the training problems.
        heldout_path: Local JSONL file or Hub dataset id of the held-out problems. When None,
            ``heldout_size`` problems are split off the training set instead.
        heldout_size: Number of held-out problems, drawn with ``seed`` (None: all of
            ``heldout_path``, or none when there is no ``heldout_path``).
        prompt_field: Field holding the problem text.
        answer_field: Field holding the reference answer.
        answer_format: ``"gsm8k"``: the answer is the text after the last ``####``, commas
            dropped; ``"plain"``: the field is the answer as is.
        system_prompt: System message for every prompt, or None for none.
        prompt_template: User message; ``{prompt}`` is replaced by the problem text.
        reward: ``"math_verify"`` (symbolic check of GSM8K / MATH answers in worker processes)
            or ``"number"`` (exact match of the final number).
        reward_workers: Worker processes of the ``math_verify`` reward.
        reward_timeout_s: Seconds each ``math_verify`` step of checking one answer may take.
        train_split: Split of a Hub dataset to train on (local files have one split).
        heldout_split: Split of a Hub dataset to hold out.
        dataset_config: Configuration name of a Hub dataset (``"main"`` for ``openai/gsm8k``).
        seed: Seed for drawing the held-out subset.
    """

    def __init__(
        self,
        train_path: str,
        heldout_path: str | None = None,
        heldout_size: int | None = None,
        prompt_field: str = "question",
        answer_field: str = "answer",
        answer_format: str = "gsm8k",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        prompt_template: str = "{prompt}",
        reward: str = "math_verify",
        reward_workers: int = 2,
        reward_timeout_s: float = 5.0,
        train_split: str = "train",
        heldout_split: str = "test",
        dataset_config: str | None = None,
        seed: int = 0,
    ) -> None:
        if answer_format not in ("gsm8k", "plain"):
            raise ValueError(f"answer_format must be 'gsm8k' or 'plain', got {answer_format!r}")
        if reward not in ("math_verify", "number"):
            raise ValueError(f"reward must be 'math_verify' or 'number', got {reward!r}")
        if "{prompt}" not in prompt_template:
            raise ValueError(f"prompt_template lacks '{{prompt}}': {prompt_template!r}")
        self.prompt_field = prompt_field
        self.answer_field = answer_field
        self.answer_format = answer_format
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.reward = reward
        self._math_verify = (
            MathVerifyReward(reward_workers, reward_timeout_s) if reward == "math_verify" else None
        )
        self.dataset_config = dataset_config
        rng = random.Random(seed)
        train = self._load(train_path, train_split)
        if heldout_path is not None:
            heldout = self._load(heldout_path, heldout_split)
            if heldout_size is not None and heldout_size < len(heldout):
                keep = sorted(rng.sample(range(len(heldout)), heldout_size))
                heldout = [heldout[i] for i in keep]
        elif heldout_size:
            if heldout_size >= len(train):
                raise ValueError(
                    f"heldout_size={heldout_size} leaves no training problems in {train_path}"
                )
            chosen = set(rng.sample(range(len(train)), heldout_size))
            heldout = [p for i, p in enumerate(train) if i in chosen]
        else:
            heldout = []
        heldout_prompts = {p.prompt for p in heldout}
        self._train = [p for p in train if p.prompt not in heldout_prompts]
        self._heldout = heldout
        if not self._train:
            raise ValueError(f"no training problems left in {train_path}")

    def _load(self, path: str, split: str) -> list[Problem]:
        import datasets

        if _is_local(path):
            local = Path(path).expanduser()
            if not local.is_file():
                raise FileNotFoundError(f"JSONL file not found: {path}")
            rows = datasets.load_dataset("json", data_files=str(local), split="train")
            name, where = local.name, lambda i: f"row {_line_number(local, i)}"
        else:
            rows = datasets.load_dataset(path, self.dataset_config, split=split)
            name, where = f"{path} [{split}]", lambda i: f"row {i + 1}"
        columns = rows.column_names
        prompts = rows[self.prompt_field] if self.prompt_field in columns else [None] * len(rows)
        answers = rows[self.answer_field] if self.answer_field in columns else [None] * len(rows)
        problems = []
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            for field, value in ((self.prompt_field, prompt), (self.answer_field, answer)):
                if value is None or not str(value).strip():
                    present = ", ".join(k for k, v in rows[i].items() if v is not None)
                    what = "missing" if value is None else "empty"
                    raise ValueError(
                        f"{name} {where(i)}: {what} field {field!r} (fields present: {present})"
                    )
            answer = str(answer)
            if self.answer_format == "gsm8k":
                if "####" not in answer:
                    raise ValueError(
                        f"{name} {where(i)}: field {self.answer_field!r} has no '####' line"
                    )
                answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
            text = self.prompt_template.format(prompt=str(prompt))
            problems.append(Problem(prompt=text, answer=answer))
        if not problems:
            raise ValueError(f"{name} holds no rows")
        return problems

    def train_problems(self) -> Sequence[Problem]:
        return self._train

    def heldout_problems(self) -> Sequence[Problem]:
        return self._heldout

    def score(self, completions: list[str], answers: list[str]) -> list[float]:
        if self._math_verify is not None:
            return self._math_verify(completions, answers)
        return [number_reward(c, a) for c, a in zip(completions, answers, strict=True)]

    def close(self) -> None:
        """Stop the reward's worker processes, if any."""
        if self._math_verify is not None:
            self._math_verify.close()
