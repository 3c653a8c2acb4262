"""Environments and multi-turn episodes: tools, parsing, the turn format, the episode loop, and the
rule that environment tokens carry no loss."""

import pytest
import torch

from ibpo_lightning.environments import Calculator, Environment, Feedback, PythonTool, ToolCall, parse_tool_calls
from ibpo_lightning.environments.calculator import evaluate, format_value
from ibpo_lightning.estimators import GRPO
from ibpo_lightning.losses import PolicyLoss
from ibpo_lightning.models.loading import load_policy, load_tokenizer
from ibpo_lightning.rollout import HFEngine, Sampler
from ibpo_lightning.rollout.engine import RolloutEngine, Sample
from ibpo_lightning.rollout.episodes import TurnFormat
from ibpo_lightning.tasks import Problem
from ibpo_lightning.types import RolloutBatch, Trajectory


def call(name, **arguments):
    import json

    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


# -- tools --------------------------------------------------------------------------------------
@pytest.mark.parametrize("expression, value", [("17 - 8", "9"), ("2 * (3 + 4)", "14"), ("7 / 2", "3.5"),
                                               ("1/3", "0.3333333333"), ("-2 ** 3", "-8"), ("10 // 3 + 10 % 3", "4"),
                                               ("6.5 * 2", "13")])
def test_calculator_values(expression, value):
    assert format_value(evaluate(expression)) == value


@pytest.mark.parametrize("expression, says", [("__import__('os')", "only numbers"), ("1 / 0", "division by zero"),
                                              ("2 ** 100", "exponents"), ("10 ** 40", "larger than 1e30"),
                                              ("1 +", "cannot read"), ("x + 1", "only numbers"),
                                              ("9" * 201, "longer than 200")])
def test_calculator_refuses(expression, says):
    with pytest.raises(ValueError, match=says):
        evaluate(expression)


def test_parse_tool_calls():
    found = parse_tool_calls("think " + call("calculator", expression="1+1") + " and "
                             + '<tool_call>{"name": 3}</tool_call><tool_call>{oops</tool_call>'
                             + '<tool_call>{"name": "f", "arguments": [1]}</tool_call><tool_call>{"name": "g"}')
    assert found[0] == ToolCall("calculator", {"expression": "1+1"})
    assert "needs" in found[1] and "not JSON" in found[2] and "must be an object" in found[3]
    assert "not closed" in found[4] and len(found) == 5
    assert parse_tool_calls("Answer: 4") == []
    code = '<tool_call>{"name": "python", "arguments": {"code": "x = 1\nprint(x)"}}</tool_call>'  # a raw newline
    assert parse_tool_calls(code) == [ToolCall("python", {"code": "x = 1\nprint(x)"})]


def test_tool_environment_answers_every_call_and_never_raises():
    env = Calculator(max_calls_per_turn=2)
    assert env.step("Answer: 9") == Feedback()  # no call: the episode ends
    turn = call("calculator", expression="17 - 8") + call("calc", expression="1") + call("calculator", expression="1")
    feedback = env.step(turn)
    lines = feedback.observation.split("\n")
    assert lines[0] == "9" and lines[1].startswith("error: no tool named 'calc'") and "at most 2" in lines[2]
    assert (feedback.tool_calls, feedback.malformed_calls) == (3, 2)
    wrong = env.step(call("calculator", x="1") + call("calculator", expression="1/0"))
    assert wrong.observation.count("error: calculator:") == 2 and wrong.malformed_calls == 2


def test_python_tool_runs_in_the_sandbox():
    tool = PythonTool(timeout_s=2.0)
    assert tool.step(call("python", code="print(17 * 23)")).observation == "391"
    assert tool.step(call("python", code="print('a')\n1 / 0")).observation == "a\nZeroDivisionError: division by zero"
    assert tool.step(call("python", code="x = 1")).observation == "(no output)"
    assert tool.step(call("python", code="while True: pass")).observation == "error: timed out after 2 s"
    assert tool.step(call("python", code="import socket; socket.socket()")).observation.startswith(("PermissionError",
                                                                                                      "OSError"))


# -- the turn format ------------------------------------------------------------------------------
def test_turn_format_renders_the_chat_template():
    tok = load_tokenizer("smollm2-135m-instruct")
    fmt = TurnFormat(tok, "tool")
    assert tok.decode(fmt.ids("9", turn_ended_on_eos=True)) == "\n<|im_start|>tool\n9<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(fmt.ids("9", turn_ended_on_eos=False)).startswith("<|im_end|>\n<|im_start|>tool")


# -- the episode loop -------------------------------------------------------------------------------
class ScriptedToolUser(RolloutEngine):
    """Answers by script: each turn calls the calculator on '<k> + 1' until it has read ``calls``
    results, then answers with the last result; sample j of a prompt makes j % 3 + 1 calls.
    Every budget it is given is recorded."""

    shares_weights = True

    def __init__(self, tokenizer):
        self.tokenizer, self.budgets = tokenizer, []

    def bind(self, model, tokenizer, compute_dtype=None):
        pass

    def generate(self, prompts, n, *, max_new_tokens, temperature, top_p=1.0, seed=None):
        self.budgets.append(max_new_tokens)
        out = []
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        for prompt, budget in zip(prompts, budgets):
            context = self.tokenizer.decode(prompt)
            results = context.count("<|im_start|>tool")
            group = []
            for j in range(n):
                calls = (j if n > 1 else int(context.split("#")[-2])) % 3 + 1  # the last count written
                text = call("calculator", expression=f"{results} + 1") if results < calls else f"Answer: {results}"
                if n > 1:
                    text += f"#{j}#"  # the script keeps count across turns
                ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                group.append(Sample(ids[:budget], [-0.5] * len(ids[:budget]), text, len(ids) <= budget))
            out.append(group)
        return out


def scripted_sampler(max_new_tokens=400, max_turns=6):
    tok = load_tokenizer("smollm2-135m-instruct")
    engine = ScriptedToolUser(tok)
    sampler = Sampler(engine, group_size=3, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=0,
                      environment=Calculator(max_turns=max_turns))
    sampler.tokenizer = tok
    return sampler, engine, tok


def test_episodes_turn_by_turn():
    sampler, engine, tok = scripted_sampler()
    problems = [Problem("count", "3")]
    batch = sampler.sample_groups(problems, None)
    assert len(batch) == 3
    for j, t in enumerate(batch.trajectories):
        calls = j % 3 + 1
        assert len(t.turn_ends) == calls + 1 and len(t.env_spans) == calls
        assert t.answer_text.startswith(f"Answer: {calls}") and t.finished
        observed = [tok.decode(t.response_ids[a:b]) for a, b in t.env_spans]
        assert observed == [f"\n<|im_start|>tool\n{k + 1}<|im_end|>\n<|im_start|>assistant\n" for k in range(calls)]
        for a, b in t.env_spans:  # environment tokens get no engine log-prob
            assert t.logprobs[a:b] == [0.0] * (b - a) and b in t.turn_ends[1:] or b < len(t.response_ids)
        assert t.turn_ends[-1] == len(t.response_ids)
    # round 1 is the single-turn call; later rounds continue only the live episodes, each with its own budget
    assert engine.budgets[0] == 400 and [len(b) for b in engine.budgets[1:]] == [3, 2, 1]
    first = batch.trajectories[0]
    assert engine.budgets[1][0] == 400 - first.env_spans[0][1]
    counts = sampler.episode_counts
    assert counts == {"episodes": 3, "turns": 9, "tool_calls": 6, "malformed_calls": 0,
                      "observation_tokens": sum(b - a for t in batch.trajectories for a, b in t.env_spans)}


def test_episode_budgets_end_episodes():
    sampler, _, _ = scripted_sampler(max_turns=2)
    batch = sampler.sample_groups([Problem("count", "3")], None)
    assert [len(t.turn_ends) for t in batch.trajectories] == [2, 2, 2]  # the turn budget
    assert batch.trajectories[2].answer_text.startswith("<tool_call>")  # still calling: no answer
    sampler, _, _ = scripted_sampler(max_new_tokens=60)
    batch = sampler.sample_groups([Problem("count", "3")], None)
    assert all(len(t.response_ids) <= 60 for t in batch.trajectories)
    assert not any(t.finished for t in batch.trajectories[1:])  # no room for a second answer: truncated


def test_reward_reads_the_last_turn_only():
    class Task:
        def score(self, completions, answers):
            return [float(c.startswith(f"Answer: {a}")) for c, a in zip(completions, answers)]

    sampler, _, _ = scripted_sampler()
    batch = sampler.sample_groups([Problem("count", "2")], None)
    fresh, batch.trajectories = batch.trajectories, []
    assert batch.add_scored(fresh, Task()) == [0.0, 1.0, 0.0]  # only the episode that answered 2


# -- no loss on environment tokens ---------------------------------------------------------------------
def episode_batch() -> RolloutBatch:
    rows = []
    for g, (reward, spans) in enumerate([(1.0, ((2, 5),)), (0.0, ((1, 3), (4, 6))), (1.0, ()), (0.0, ((3, 4),))]):
        rows.append(Trajectory([1, 2], list(range(10, 18)), [-0.7] * 8, "q", "r", group=g // 2, reward=reward,
                               env_spans=spans))
    return RolloutBatch(rows, policy_version=0, groups=[Problem("p", "1"), Problem("q", "1")]).collate(pad_id=0)


def test_environment_tokens_carry_no_loss_and_no_gradient():
    batch = episode_batch()
    assert batch.env_mask[0, 4:7].all() and not batch.env_mask[0, 7:].any() and not batch.env_mask[2].any()
    assert (batch.response_mask[batch.env_mask] == 0).all()
    adv, weights = GRPO().assign(batch)
    weights = batch.model_tokens_only(weights)
    assert (weights[batch.env_mask] == 0).all() and (weights[~batch.env_mask] > 0).any()
    loss_fn = PolicyLoss(kl_coef=0.1, entropy_coef=0.01)
    torch.manual_seed(0)
    base = -torch.rand(batch.input_ids.shape) - 0.1

    def loss_and_grad(shift: float):
        logp = (base + shift * batch.env_mask).requires_grad_(True)  # move only the environment tokens
        entropy = (base.abs() + shift * batch.env_mask).requires_grad_(True)
        old = (base + 2 * shift * batch.env_mask).detach()
        ref = base.detach() - 0.05 + 3 * shift * batch.env_mask
        loss, _ = loss_fn(logp, old, adv, weights, loss_fn.normaliser(weights), ref, entropy)
        loss.backward()
        return loss.detach(), logp.grad, entropy.grad

    loss0, grad0, ent0 = loss_and_grad(0.0)
    loss1, grad1, ent1 = loss_and_grad(-3.0)
    assert loss0 != 0 and torch.equal(loss0, loss1)
    assert torch.equal(grad0, grad1) and torch.equal(ent0, ent1)
    assert (grad0[batch.env_mask] == 0).all() and (grad0[weights > 0] != 0).any()


def test_single_turn_batches_are_unchanged():
    batch = episode_batch()
    for t in batch.trajectories:
        t.env_spans = ()
    batch.collate(pad_id=0)
    assert batch.env_mask is None
    weights = torch.rand(batch.input_ids.shape)
    assert batch.model_tokens_only(weights) is weights


# -- a real model, turn by turn -----------------------------------------------------------------------
class Continue(Environment):
    """Answers every turn with 'Continue.' until the turn budget ends the episode."""

    def step(self, turn):
        return Feedback("Continue.")


def test_hf_engine_episodes_follow_the_chat_template():
    model, tok = load_policy("smollm2-135m-instruct")
    engine = HFEngine()
    sampler = Sampler(engine, group_size=2, max_new_tokens=120, temperature=0.0, top_p=1.0, seed=0,
                      environment=Continue(max_turns=3))
    sampler.bind(model, tok, version=0)
    problems = [Problem("What is 2 + 3? Answer in one short sentence.", "5"), Problem("Name a colour in one word.", "red")]
    prompts = [sampler.encode(p.prompt) for p in problems]
    episodes = sampler.answer(problems, prompts, 1, temperature=0.0)
    for problem, prompt, (episode,) in zip(problems, prompts, episodes):
        assert episode.finished and len(episode.turn_ends) == 3 and len(episode.env_spans) == 2
        # the episode's tokens spell the conversation as the chat template writes it
        turns = [tok.decode(episode.token_ids[a:b], skip_special_tokens=True)
                 for a, b in zip((0,) + tuple(end for _, end in episode.env_spans), episode.turn_ends)]
        messages = [{"role": "user", "content": problem.prompt}]
        for k, turn in enumerate(turns):
            messages.append({"role": "assistant", "content": turn})
            if k < 2:
                messages.append({"role": "tool", "content": "Continue."})
        rendered = tok.apply_chat_template(messages, tokenize=False)
        assert tok.decode(prompt + episode.token_ids) == rendered.rstrip("\n")
        assert episode.answer_text == turns[-1]


class SingleTurnOnly(GRPO):
    """A user's estimator whose extra rollouts cannot continue an episode."""

    multi_turn = False


def test_an_estimator_that_cannot_continue_episodes_refuses_an_environment(tmp_path):
    from ibpo_lightning.cli import run_cli

    with pytest.raises(ValueError, match="SingleTurnOnly generates single-turn continuations .* use GRPO, DAPO"):
        run_cli(["fit", "-c", "configs/tiny.yaml", "-c", "configs/environments/calculator.yaml",
                 "--estimator=tests.test_environments.SingleTurnOnly",
                 f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.max_steps=1"])


def test_credit_localisation_reads_the_models_own_lines_in_an_episode():
    """A calculator episode whose second line is wrong: the error is found in the model's text with
    the tool calls and tool turns left out, at the token where that line starts."""
    from ibpo_lightning.diagnostics.credit import model_text
    from ibpo_lightning.sft.data import encode_episode
    from ibpo_lightning.tasks import ChainTask

    tok = load_tokenizer("smollm2-135m-instruct")
    task = ChainTask(num_steps=3, solution_format="calculator", num_train=1, num_heldout=1)
    problem = task.train_problems()[0]
    lines = [line for line in problem.solution.split("\n")]
    expression, value = lines[1].split("</tool_call>")[1].split(" = ")
    wrong_line = f"{expression} = {int(value) + 1}"
    solution = problem.solution.replace(lines[1].split("</tool_call>")[1], wrong_line)
    e = encode_episode(tok, Problem(problem.prompt, problem.answer, solution), None, Calculator(), TurnFormat(tok, "tool"))
    t = Trajectory(e.prompt_ids, e.response_ids, [0.0] * len(e.response_ids), "q", "r", group=0,
                   env_spans=e.env_spans, turn_ends=(len(e.response_ids),))
    tokens, text, owner = model_text(tok, t)
    assert "<tool_call>" not in text and "<|im_end|>" not in text and "tool" not in text
    assert text.split("\n")[1] == wrong_line and all(not any(a <= k < b for a, b in e.env_spans) for k in tokens)
    offset = task.first_error(problem.prompt, text)
    assert offset == len(text.split("\n")[0]) + 1  # the second line
    token = tokens[owner[offset]]
    assert tok.decode(t.response_ids[token:token + 3]).startswith(expression[:2])
    assert token == e.env_spans[1][1]  # the first token of the third turn, after the second tool answer
    single = Trajectory([1], [5, 6, 7], [0.0] * 3, "q", "r", group=0)  # single-turn: every token, as it reads
    assert model_text(tok, single)[0] == [0, 1, 2]
