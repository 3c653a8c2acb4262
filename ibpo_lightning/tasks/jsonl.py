"""Problems from a JSONL file or a Hugging Face Hub dataset (GSM8K, MATH, AIME, ...).

``read_fields`` and ``split_heldout`` are shared with the other file-backed tasks
(:class:`~ibpo_lightning.tasks.countdown.CountdownTask`).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ibpo_lightning.rewards.composite import Reward, RewardTerm, WeightedReward, close_reward
from ibpo_lightning.rewards.math_verify import MathVerifyReward
from ibpo_lightning.tasks.base import Problem, Task

DEFAULT_SYSTEM_PROMPT = "Solve the problem step by step. Put the final answer in \\boxed{}."
_LOCAL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
ANSWER_FORMATS = ("gsm8k", "plain", "integer")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, "<<48/2=24>>"


def _is_local(path: str) -> bool:
    return path.endswith(_LOCAL_SUFFIXES) or path.startswith(("/", ".", "~")) or Path(path).exists()


def _read_jsonl(local: Path, shown: str) -> "_LocalRows":
    """The rows of a local JSONL file, read once, failing where `datasets` would fail without
    saying where.

    Every non-blank line must be a JSON object; the first that is not is a ValueError naming
    ``shown`` and its 1-based line. A file without a non-blank line "holds no rows". A ``.json``
    file holding one JSON document (an array of rows, possibly over many lines) is read as that.
    """
    opener = gzip.open if local.suffix == ".gz" else open
    rows, numbers, problem = [], [], None
    try:
        with opener(local, "rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.rstrip().decode("utf-8-sig" if number == 1 else "utf-8"))
                except UnicodeDecodeError as err:
                    problem = f"{shown} line {number} is not UTF-8 text ({err.reason} at byte {err.start})"
                except json.JSONDecodeError as err:
                    problem = f"{shown} line {number} is not valid JSON: {err.msg} at column {err.colno}"
                else:
                    if isinstance(row, dict):
                        rows.append(row)
                        numbers.append(number)
                        continue
                    problem = f"{shown} line {number} is not a JSON object but a {type(row).__name__}"
                break
    except (gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{shown} is not a readable gzip file: {err}") from None
    if problem is None:
        if not rows:
            raise ValueError(f"{shown} holds no rows")
        return _LocalRows(rows, numbers)
    try:
        with opener(local, "rt", encoding="utf-8-sig") as text:
            document = json.load(text)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError: not one document either
        raise ValueError(problem) from None
    if isinstance(document, list) and not document:
        raise ValueError(f"{shown} holds no rows")
    document = document if isinstance(document, list) else [document]
    return _LocalRows(document, list(range(1, len(document) + 1)))


class _LocalRows(list):
    """The rows of a local file as dicts, with the two things of a `datasets.Dataset` the readers
    use: ``column_names`` and a column by name (None where a row lacks the field); ``lines``: the
    1-based line of each row (its position for a file holding one JSON array)."""

    def __init__(self, rows: list, lines: list[int]) -> None:
        super().__init__(rows)
        self.lines = lines

    @property
    def column_names(self) -> list[str]:
        return list(dict.fromkeys(key for row in self for key in row))

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row.get(key) for row in self]
        return super().__getitem__(key)


def _column(rows, field: str) -> list[Any]:
    """Values of a (possibly dotted, ``reward_model.ground_truth.target``) field; None where absent."""
    top, *rest = field.split(".")
    values = rows[top] if top in rows.column_names else [None] * len(rows)
    for key in rest:
        values = [v.get(key) if isinstance(v, dict) else None for v in values]
    return list(values)


@dataclass
class Records:
    """The requested fields of every row of one source, and where each row is."""

    name: str
    """The file name, or ``"<hub id> [<split>]"``."""
    values: list[tuple]
    """One tuple per row, the fields in the order requested."""
    locate: Callable[[int], str]
    """``locate(i)``: ``"<name> row <line>"`` for the i-th row, for error messages."""


def open_rows(path: str, split: str = "train", dataset_config: str | None = None):
    """The rows of a local JSONL file or a Hub dataset split, its display name, and ``where(i)``:
    the 1-based location of row ``i`` (the file's line for local files) for error messages.

    A local file is read here line by line (`_read_jsonl`): a line that is not a JSON object, or
    a file with no rows, is a ValueError naming the file and line. It is not read through
    `datasets`' JSON builder, which fails without a location on
    files that mix value types in a field *and* hold a blank line ("Expected object or value").
    """
    import datasets

    if _is_local(path):
        local = Path(path).expanduser()
        if not local.is_file():
            raise FileNotFoundError(f"JSONL file not found: {path}")
        rows = _read_jsonl(local, path)
        return rows, local.name, lambda i: f"row {rows.lines[i]}"
    rows = datasets.load_dataset(path, dataset_config, split=split)
    return rows, f"{path} [{split}]", lambda i: f"row {i + 1}"


def read_fields(path: str, fields: Sequence[str], split: str = "train", dataset_config: str | None = None,
                drop_incomplete: bool = False) -> Records:
    """Read ``fields`` (dotted for nested ones) of every row of a local JSONL file or a Hub dataset.

    A row lacking a field, or holding an empty one, is an error naming the file, row and field;
    with ``drop_incomplete`` such rows are left out instead, with one warning that counts them.
    """
    rows, name, where = open_rows(path, split, dataset_config)
    columns = [_column(rows, field) for field in fields]
    values = list(zip(*columns)) if columns else []
    kept: list[int] = []
    dropped: list[str] = []
    for i, row in enumerate(values):
        for field, value in zip(fields, row):
            if value is None or not str(value).strip():
                present = ", ".join(k for k, v in rows[i].items() if v is not None)
                what = "missing" if value is None else "empty"
                problem = f"{name} {where(i)}: {what} field {field!r} (fields present: {present})"
                if not drop_incomplete:
                    raise ValueError(problem)
                dropped.append(problem)
                break
        else:
            kept.append(i)
    if dropped:
        warnings.warn(f"{len(dropped)} incomplete rows left out (drop_incomplete), the first: {dropped[0]}", stacklevel=2)
    if not kept:
        raise ValueError(f"{name} holds no complete rows" if dropped else f"{name} holds no rows")
    return Records(name, [values[i] for i in kept], lambda j: f"{name} {where(kept[j])}")


def split_heldout(train: list[Problem], heldout: list[Problem] | None, heldout_size: int | None,
                  seed: int, source: str) -> tuple[list[Problem], list[Problem]]:
    """Held-out problems (``heldout``, or ``heldout_size`` split off ``train``; a seeded subset of
    ``heldout_size`` when both are given) and the training problems whose prompt is not held out."""
    rng = random.Random(seed)
    if heldout is not None:
        if heldout_size is not None and heldout_size < len(heldout):
            keep = sorted(rng.sample(range(len(heldout)), heldout_size))
            heldout = [heldout[i] for i in keep]
    elif heldout_size:
        if heldout_size >= len(train):
            raise ValueError(f"heldout_size={heldout_size} leaves no training problems in {source}")
        chosen = set(rng.sample(range(len(train)), heldout_size))
        heldout = [p for i, p in enumerate(train) if i in chosen]
    else:
        heldout = []
    held = {p.prompt for p in heldout}
    return [p for p in train if p.prompt not in held], heldout


class JsonlTask(Task):
    """Problems from local JSONL (``.jsonl``, ``.jsonl.gz``) or a Hub dataset, checked at start.

    Every row must have a non-empty prompt and answer field; otherwise construction fails with
    an error naming the file, the row and the field. Held-out problems never appear in train
    (train rows whose prompt equals a held-out prompt are dropped). With no ``train_path`` the
    task is evaluation-only (a benchmark: its ``heldout_path`` problems, no training problems).

    Args:
        train_path: Local JSONL file, or a Hugging Face Hub dataset id, of the training problems;
            None for an evaluation-only task.
        heldout_path: Local JSONL file or Hub dataset id of the held-out problems. When None,
            ``heldout_size`` problems are split off the training set instead.
        heldout_size: Number of held-out problems, a fixed subset drawn with ``seed`` (None: all
            of ``heldout_path``, or none when there is no ``heldout_path``).
        prompt_field: Field holding the problem text; dotted for a nested field (``a.b``).
        answer_field: Field holding the reference answer; dotted for a nested field.
        solution_field: Field holding a worked solution, for supervised fine-tuning
            (``Problem.solution``; None: the task has none). GSM8K's (``answer``, with
            ``answer_format: gsm8k``) is rewritten to answer as the policy is asked to: the
            ``<<...>>`` calculator notes dropped and the ``#### x`` line made
            ``The final answer is \\boxed{x}.``; others (MATH's ``solution``) are kept as they are.
        answer_format: ``"gsm8k"``: the answer is the text after the last ``####``, commas
            dropped; ``"plain"``: the field is the answer as is; ``"integer"``: an integer,
            normalised (AIME's ``"025"`` becomes ``"25"``).
        system_prompt: System message for every prompt, or None for none.
        prompt_template: User message; ``{prompt}`` is replaced by the problem text.
        reward: What checks an answer: any callable ``reward(completions, answers) ->
            list[float]``, chosen by ``class_path`` (with ``init_args``) or by the dotted path of
            a function; None: ``MathVerifyReward()`` (symbolic check of GSM8K / MATH answers in
            2 worker processes). ``NumberReward`` compares the final number exactly. Its
            ``close()``, if any, is called by the task's.
        extra_rewards: Shaping terms added to the answer reward, each with its weight (e.g.
            ``FormatReward``, ``LengthPenalty``); evaluation counts correctness without them.
        train_split: Split of a Hub dataset to train on (local files have one split).
        heldout_split: Split of a Hub dataset to hold out.
        dataset_config: Configuration name of a Hub dataset (``"main"`` for ``openai/gsm8k``).
        seed: Seed for drawing the held-out subset.
        drop_incomplete: Leave out rows whose prompt or answer is missing or empty (one warning
            counts them) instead of failing at start-up; the MATH train sets hold a few.
    """

    def __init__(
        self,
        train_path: str | None = None,
        heldout_path: str | None = None,
        heldout_size: int | None = None,
        prompt_field: str = "question",
        answer_field: str = "answer",
        solution_field: str | None = None,
        answer_format: str = "gsm8k",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        prompt_template: str = "{prompt}",
        reward: Reward | None = None,
        extra_rewards: list[RewardTerm] | None = None,
        train_split: str = "train",
        heldout_split: str = "test",
        dataset_config: str | None = None,
        seed: int = 0,
        drop_incomplete: bool = False,
    ) -> None:
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        if reward is not None and not callable(reward):
            raise TypeError(f"reward must be a callable (completions, answers) -> list[float], "
                            f"got {reward!r}")
        if "{prompt}" not in prompt_template:
            raise ValueError(f"prompt_template lacks '{{prompt}}': {prompt_template!r}")
        if train_path is None and heldout_path is None:
            raise ValueError("JsonlTask needs a train_path, a heldout_path, or both")
        self.prompt_field = prompt_field
        self.answer_field = answer_field
        self.solution_field = solution_field
        self.answer_format = answer_format
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.reward = reward if reward is not None else MathVerifyReward()
        self._shaped = WeightedReward.with_terms(self.reward, extra_rewards or [])
        self.dataset_config, self.drop_incomplete = dataset_config, drop_incomplete
        train = self._load(train_path, train_split) if train_path is not None else []
        heldout = self._load(heldout_path, heldout_split) if heldout_path is not None else None
        self._train, self._heldout = split_heldout(train, heldout, heldout_size, seed, str(train_path))
        if train_path is not None and not self._train:
            raise ValueError(f"no training problems left in {train_path}")

    def _load(self, path: str, split: str) -> list[Problem]:
        fields = [self.prompt_field, self.answer_field] + ([self.solution_field] if self.solution_field else [])
        records = read_fields(path, fields, split, self.dataset_config, self.drop_incomplete)
        return [self._problem(row[0], row[1], records.locate, i, row[2] if len(row) > 2 else None)
                for i, row in enumerate(records.values)]

    def _solution(self, text: Any) -> str:
        text = str(text).strip()
        if self.answer_format == "gsm8k" and "####" in text:
            work, final = text.rsplit("####", 1)
            work = _CALCULATOR.sub("", work).strip()
            text = f"{work}\nThe final answer is \\boxed{{{final.strip().replace(',', '')}}}."
        return text

    def _problem(self, prompt: Any, answer: Any, locate: Callable[[int], str], i: int,
                 solution: Any = None) -> Problem:
        answer = str(answer).strip()
        if self.answer_format == "gsm8k":
            if "####" not in answer:
                raise ValueError(f"{locate(i)}: field {self.answer_field!r} has no '####' line")
            answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
        elif self.answer_format == "integer":
            try:
                answer = str(int(answer.replace(",", "")))
            except ValueError:
                raise ValueError(
                    f"{locate(i)}: field {self.answer_field!r} is not an integer: {answer!r}"
                ) from None
        return Problem(prompt=self.prompt_template.format(prompt=str(prompt)), answer=answer,
                       solution=self._solution(solution) if solution is not None else None, origin=locate(i))

    def train_problems(self) -> Sequence[Problem]:
        return self._train

    def heldout_problems(self) -> Sequence[Problem]:
        return self._heldout

    def verify(self, completions: list[str], answers: list[str]) -> list[float]:
        """The answer reward alone (1.0 for a right answer with the built-in ones), no shaping."""
        return self.reward(completions, answers)

    def score(self, completions: list[str], answers: list[str]) -> list[float]:
        return self._shaped(completions, answers)

    def close(self) -> None:
        """Stop the rewards' worker processes, if any (each one's ``close()``)."""
        close_reward(self._shaped)
