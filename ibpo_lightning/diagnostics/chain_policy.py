"""A scripted policy for the chain task: a noisy calculator standing in for the language model.

The credit-localisation diagnostic needs failed samples whose first wrong step is known, and
SmolLM2-135M does not write the one-step-per-line format (measured: at most 3 in 8 samples had
two equations). This engine writes it, and every estimator sub-call gets an answer:

* a task prompt, or a task prompt plus a partial answer (resets, Monte-Carlo probes): the
  remaining steps from the last line's value, each step's result wrong with probability
  ``error_rate`` (off by 1 to 3), later steps built on the wrong value, then ``Answer: <value>``;
* a repair prompt (IBPO's "Attempt A ... Attempt B"): solves the problem afresh with the same
  error rate, reading neither attempt (a policy with no repair skill);
* a localisation prompt (SRPO's "first went wrong"): names the true first wrong step with
  probability ``locate_accuracy``, otherwise a uniformly drawn step.

Log-probs are reported as -1 per token: this is not a distribution, and the trainer's own
log-probs are what the loss uses. Greedy calls (temperature 0) make no errors.
"""

from __future__ import annotations

import random
import re

from ibpo_lightning.rollout.engine import RolloutEngine, Sample
from ibpo_lightning.tasks.chain import apply, parse_problem, solution_lines

_RESULT = re.compile(r"=\s*(-?\d+)\s*$")
_NUMBERED = re.compile(r"^Step (\d+): (.*)$", re.MULTILINE)


class NoisyCalculator(RolloutEngine):
    """Scripted chain-task policy (see module docstring).

    Args:
        error_rate: probability that a step's result is wrong.
        locate_accuracy: probability that a localisation answer names the true first wrong step.
        seed: seed of unseeded calls.
    """

    shares_weights = True  # nothing to sync: the policy is the script

    def __init__(self, error_rate: float = 0.25, locate_accuracy: float = 0.5, seed: int = 0) -> None:
        if not 0 <= error_rate <= 1 or not 0 <= locate_accuracy <= 1:
            raise ValueError(f"error_rate and locate_accuracy must be in [0, 1], got {error_rate}, {locate_accuracy}")
        self.error_rate, self.locate_accuracy, self.rng = error_rate, locate_accuracy, random.Random(seed)
        self.tokenizer, self.marker = None, None

    def bind(self, model, tokenizer, compute_dtype=None) -> None:
        self.tokenizer = tokenizer
        bare = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        full = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
        self.marker = full[len(bare):]  # where the assistant's answer starts

    def generate(self, prompts, n, *, max_new_tokens, temperature, top_p=1.0, seed=None):
        out = []
        for k, prompt in enumerate(prompts):
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            head, _, answer_so_far = text.rpartition(self.marker) if self.marker in text else (text, "", "")
            group = []
            for j in range(n):
                rng = random.Random(f"{seed}:{k}:{j}") if seed is not None else self.rng
                noise = self.error_rate if temperature > 0 else 0.0
                reply = self._reply(head, answer_so_far, noise, rng)
                ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                finished = len(ids) <= max_new_tokens
                ids = ids[:max_new_tokens]
                group.append(Sample(token_ids=ids, logprobs=[-1.0] * len(ids),
                                    text=self.tokenizer.decode(ids, skip_special_tokens=True), finished=finished))
            out.append(group)
        return out

    def _reply(self, head: str, answer_so_far: str, noise: float, rng: random.Random) -> str:
        parsed = parse_problem(head)
        if parsed is None:
            return "I cannot tell."
        start, ops = parsed
        if "first went wrong" in head:
            return self._locate(head, solution_lines(start, ops), rng)
        if "Attempt A" in head:
            answer_so_far = ""  # no repair skill: solve afresh
        return self._continue(start, ops, answer_so_far, noise, rng)

    def _locate(self, head: str, correct: list[str], rng: random.Random) -> str:
        steps = [line for _, line in _NUMBERED.findall(head)]
        wrong = next((k for k, line in enumerate(steps) if k >= len(correct) or line.strip() != correct[k]), len(steps) - 1)
        pick = wrong if rng.random() < self.locate_accuracy else rng.randrange(len(steps))
        return f"The first wrong step is \\boxed{{{pick + 1}}}."

    def _continue(self, start: int, ops: list[tuple[str, int]], so_far: str, noise: float, rng: random.Random) -> str:
        lines = so_far.split("\n")
        done, partial = lines[:-1], lines[-1]
        if "Answer:" in so_far:
            return ""
        out = "\n" if partial else ""  # a prefix cut inside a line: that line counts as written
        written = done + ([partial] if partial else [])
        value = start
        for line in written:
            found = _RESULT.search(line)
            value = int(found.group(1)) if found else value
        for op, operand in ops[len(written):]:
            result = apply(value, op, operand)
            if rng.random() < noise:
                result += rng.choice([-3, -2, -1, 1, 2, 3])
            out += f"{value} {op} {operand} = {result}\n"
            value = result
        return out + f"Answer: {value}"
