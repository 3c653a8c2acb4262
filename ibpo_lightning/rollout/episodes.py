"""Multi-turn episodes: the sampler generates turn by turn for a whole batch of episodes.

Round 1 is the single-turn call itself (``n`` samples of each prompt, one generate call). After
each round, every episode whose turn ended on the end-of-turn token hands the turn's text to its
environment (``Environment.step``); an observation is appended as a chat turn of the
environment's role (its tokens rendered by the model's own chat template, see
:class:`TurnFormat`), and the episode goes on in the next round, whose one generate call
continues every live episode from its whole context (vLLM's prefix cache keeps the earlier turns;
each episode gets the tokens it has left). An episode ends when its environment answers nothing
(the turn was the answer), after ``max_turns`` model turns, or when its token budget
(``max_new_tokens`` for model and environment tokens together, so that prompt plus episode always
fits the context the prompt check guarantees) runs out, which marks it truncated.

An episode is one :class:`EpisodeSample`: the response tokens of every turn and observation in
order, with the spans the environment wrote (``env_spans``: no loss, no log-prob of the policy's
own), the ends of the model's turns (``turn_ends``: the steps of per-step estimators), and the
last turn's text, which the task's reward reads (``answer_text``: a tool's result printed in an
observation can never be taken for the model's answer).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ibpo_lightning.environments.base import Environment, Feedback
from ibpo_lightning.rollout.engine import Sample

_OBSERVATION, _TURN = "\x00observation\x00", "\x00turn\x00"


class TurnFormat:
    """Token ids that close a model turn and render an observation as the next chat turn.

    Read off the chat template once: the text it renders after an assistant turn, and the text
    of a ``role`` message followed by the generation prompt of the next assistant turn. A model
    turn that ended on the end-of-sequence token already holds the start of that closing text.
    """

    def __init__(self, tokenizer, role: str) -> None:
        self.tokenizer = tokenizer
        base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _TURN}]
        before = tokenizer.apply_chat_template(base, tokenize=False)
        after = tokenizer.apply_chat_template(base + [{"role": role, "content": _OBSERVATION}], tokenize=False,
                                              add_generation_prompt=True)
        if not after.startswith(before) or _OBSERVATION not in after[len(before):]:
            raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')} does not "
                             f"render a {role!r} message after the conversation so far: it cannot hold multi-turn "
                             "episodes (set the environment's role to one the template renders)")
        self.closing = before.split(_TURN, 1)[1]
        self.head, self.tail = after[len(before):].split(_OBSERVATION)

    def ids(self, observation: str, turn_ended_on_eos: bool) -> list[int]:
        closing, eos = self.closing, self.tokenizer.eos_token
        if turn_ended_on_eos and eos and closing.startswith(eos):
            closing = closing[len(eos):]
        return list(self.tokenizer.encode(closing + self.head + observation + self.tail, add_special_tokens=False))


@dataclass
class EpisodeSample(Sample):
    """A whole episode as one sample (see the module docstring)."""

    env_spans: tuple[tuple[int, int], ...] = ()
    """[start, end) response-token ranges the environment wrote."""
    turn_ends: tuple[int, ...] = ()
    """Response-token offset after each model turn."""
    answer_text: str = ""
    """The last model turn's text."""
    tool_calls: int = 0
    malformed_calls: int = 0


@dataclass
class _Episode:
    env: Environment
    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_spans: list[tuple[int, int]] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    last_turn: str = ""
    finished: bool = False
    live: bool = True
    tool_calls: int = 0
    malformed_calls: int = 0

    def sample(self, tokenizer) -> EpisodeSample:
        return EpisodeSample(token_ids=self.ids, logprobs=self.logprobs,
                             text=tokenizer.decode(self.ids, skip_special_tokens=False), finished=self.finished,
                             env_spans=tuple(self.env_spans), turn_ends=tuple(self.turn_ends),
                             answer_text=self.last_turn, tool_calls=self.tool_calls,
                             malformed_calls=self.malformed_calls)


def run_episodes(sampler, environment: Environment, problems, prompts: list[list[int]], n: int, *, kind: str,
                 temperature: float | None = None, max_new_tokens: int | None = None) -> list[list[EpisodeSample]]:
    """``n`` episodes of each problem, started from its token prompt; grouped by problem."""
    budget = max_new_tokens or sampler.max_new_tokens
    turns = sampler.turn_format(environment.role)
    episodes: list[_Episode] = []
    for problem, prompt in zip(problems, prompts):
        for _ in range(n):
            env = environment.spawn()
            env.reset(problem)
            episodes.append(_Episode(env, list(prompt)))
    first = sampler.generate(prompts, n, temperature=temperature, max_new_tokens=budget, kind=kind)
    with ThreadPoolExecutor(max_workers=8) as pool:  # tools may run programs: wait for them together
        _take_turns(episodes, [s for group in first for s in group], environment.max_turns, budget, turns, pool)
        while live := [e for e in episodes if e.live]:
            out = sampler.generate([e.prompt + e.ids for e in live], 1, temperature=temperature,
                                   max_new_tokens=[budget - len(e.ids) for e in live], kind=kind)
            _take_turns(live, [group[0] for group in out], environment.max_turns, budget, turns, pool)
    for e in episodes:
        e.env.close()
    counts = {"episodes": len(episodes), "turns": sum(len(e.turn_ends) for e in episodes),
              "tool_calls": sum(e.tool_calls for e in episodes),
              "malformed_calls": sum(e.malformed_calls for e in episodes),
              "observation_tokens": sum(b - a for e in episodes for a, b in e.env_spans)}
    for key, value in counts.items():
        sampler.episode_counts[key] = sampler.episode_counts.get(key, 0) + value
    made = [e.sample(sampler.tokenizer) for e in episodes]
    return [made[i * n : (i + 1) * n] for i in range(len(prompts))]


def _take_turns(episodes: list[_Episode], samples: list[Sample], max_turns: int, budget: int, turns: TurnFormat,
                pool: ThreadPoolExecutor) -> None:
    """Append each episode's new turn; ask the environments of finished turns for an observation."""
    asking = []
    for e, s in zip(episodes, samples):
        e.ids += s.token_ids
        e.logprobs += s.logprobs
        e.turn_ends.append(len(e.ids))
        e.last_turn = s.text
        e.finished = s.finished
        if not s.finished or len(e.turn_ends) >= max_turns:
            e.live = False  # cut at the token budget, or the turn budget is spent
        else:
            asking.append((e, s))
    answers: list[Feedback] = list(pool.map(lambda pair: pair[0].env.step(pair[1].text), asking))
    for (e, s), feedback in zip(asking, answers):
        e.tool_calls += feedback.tool_calls
        e.malformed_calls += feedback.malformed_calls
        if feedback.done:
            e.live = False
            continue
        ids = turns.ids(feedback.observation, bool(s.token_ids) and s.token_ids[-1] == turns.tokenizer.eos_token_id)
        if len(e.ids) + len(ids) >= budget:  # no room to read the observation and answer
            e.live, e.finished = False, False
            continue
        e.env_spans.append((len(e.ids), len(e.ids) + len(ids)))
        e.ids += ids
        e.logprobs += [0.0] * len(ids)
