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

``continue_episodes`` plays the rest of episodes from the start of one of their model turns (the
resets and probes of per-step estimators, whose steps are turns), replaying the environment
through the turns before it first.

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

    @property
    def scored_text(self) -> str:
        return self.answer_text


@dataclass
class _Episode:
    env: Environment
    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_spans: list[tuple[int, int]] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    start: int = 0
    """Response tokens given as a prefix (not sampled here)."""
    last_turn: str = ""
    finished: bool = False
    live: bool = True
    tool_calls: int = 0
    malformed_calls: int = 0

    @classmethod
    def open(cls, environment: Environment, problem, prompt: list[int]) -> "_Episode":
        env = environment.spawn()
        env.reset(problem)
        return cls(env, list(prompt))

    def replay(self, row, cut: int, tokenizer) -> None:
        """Take ``row``'s first ``cut`` response tokens (a model turn's start) as this episode's
        prefix, stepping the environment through its turns so that it is where the row's was."""
        starts = row.turn_starts
        if cut not in starts:
            raise ValueError(f"an episode continues only from the start of a model turn (offsets {starts}), not {cut}")
        for a, b in zip(starts, row.turn_ends):
            if b > cut:
                break
            if self.env.step(tokenizer.decode(row.response_ids[a:b], skip_special_tokens=True)).done:
                raise ValueError("the environment ended an episode while replaying a turn it had answered: "
                                 "an environment must answer the same turns alike")
        self.ids, self.logprobs = list(row.response_ids[:cut]), list(row.logprobs[:cut])
        self.env_spans = [span for span in row.env_spans if span[1] <= cut]
        self.turn_ends = [end for end in row.turn_ends if end <= cut]
        self.start = cut

    def sample(self, tokenizer) -> EpisodeSample:
        """What was sampled after the prefix, offsets counted from its start."""
        k, ids = self.start, self.ids[self.start:]
        return EpisodeSample(token_ids=ids, logprobs=self.logprobs[k:],
                             text=tokenizer.decode(ids, skip_special_tokens=True), finished=self.finished,
                             env_spans=tuple((a - k, b - k) for a, b in self.env_spans if a >= k),
                             turn_ends=tuple(end - k for end in self.turn_ends if end > k),
                             answer_text=self.last_turn, tool_calls=self.tool_calls,
                             malformed_calls=self.malformed_calls)


def run_episodes(sampler, environment: Environment, problems, prompts: list[list[int]], n: int, *, kind: str,
                 temperature: float | None = None, max_new_tokens: int | None = None) -> list[list[EpisodeSample]]:
    """``n`` episodes of each problem, started from its token prompt; grouped by problem."""
    budget = max_new_tokens or sampler.max_new_tokens
    episodes = [_Episode.open(environment, problem, prompt) for problem, prompt in zip(problems, prompts)
                for _ in range(n)]
    first = sampler.generate(prompts, n, temperature=temperature, max_new_tokens=budget, kind=kind)
    return _play(sampler, environment, episodes, first, n, budget, kind, temperature)


def continue_episodes(sampler, environment: Environment, problems, rows, cuts: list[int], n: int, *, kind: str,
                      temperature: float | None = None) -> list[list[EpisodeSample]]:
    """``n`` continuations of each episode ``rows[i]`` from its first ``cuts[i]`` response tokens (the
    start of a model turn), within the budget a fresh episode has; each sample holds what follows
    the prefix. The environment is replayed through the prefix's turns first."""
    budget = sampler.max_new_tokens
    episodes = []
    for problem, row, cut in zip(problems, rows, cuts):
        for _ in range(n):
            episodes.append(_Episode.open(environment, problem, row.prompt_ids))
            episodes[-1].replay(row, cut, sampler.tokenizer)
    contexts = [row.prompt_ids + row.response_ids[:cut] for row, cut in zip(rows, cuts)]
    first = sampler.generate(contexts, n, temperature=temperature, kind=kind,
                             max_new_tokens=[max(1, budget - cut) for cut in cuts])
    return _play(sampler, environment, episodes, first, n, budget, kind, temperature)


def _play(sampler, environment: Environment, episodes: list[_Episode], first: list[list[Sample]], n: int, budget: int,
          kind: str, temperature: float | None) -> list[list[EpisodeSample]]:
    """Play ``episodes`` to their ends from their first sampled turns, round by round."""
    turns = sampler.turn_format(environment.role)
    with ThreadPoolExecutor(max_workers=8) as pool:  # tools may run programs: wait for them together
        _take_turns(episodes, [s for group in first for s in group], environment.max_turns, budget, turns, pool)
        while live := [e for e in episodes if e.live]:
            out = sampler.generate([e.prompt + e.ids for e in live], 1, temperature=temperature,
                                   max_new_tokens=[budget - len(e.ids) for e in live], kind=kind)
            _take_turns(live, [group[0] for group in out], environment.max_turns, budget, turns, pool)
    for e in episodes:
        e.env.close()
    counts = {"episodes": len(episodes), "turns": sum(end > e.start for e in episodes for end in e.turn_ends),
              "tool_calls": sum(e.tool_calls for e in episodes),
              "malformed_calls": sum(e.malformed_calls for e in episodes),
              "observation_tokens": sum(b - a for e in episodes for a, b in e.env_spans if a >= e.start)}
    for key, value in counts.items():
        sampler.episode_counts[key] = sampler.episode_counts.get(key, 0) + value
    made = [e.sample(sampler.tokenizer) for e in episodes]
    return [made[i * n : (i + 1) * n] for i in range(len(made) // n)]


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
