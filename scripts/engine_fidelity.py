"""Does each rollout engine sample the distribution the trainer scores? Next-token frequencies
against the trainer's softmax, at the positions of a chain answer where the model hesitates.

    python scripts/engine_fidelity.py --model runs/sft_chain/export                       # fp32
    python scripts/engine_fidelity.py --model runs/sft_chain/export --precision bf16-mixed

The positions are the ``a op b =`` of held-out chains (the next token is the result) where the
trainer's most likely token has probability under ``--max-prob``. Each engine draws
``--samples`` tokens at each position at temperature 1; the report is the mean total-variation
distance between the drawn frequencies and the trainer's probabilities, beside the same distance
for exact multinomial draws (the sampling noise alone): an engine that samples the trainer's
distribution sits at the noise level. The last line scores the same positions in the other
precision, to show how far apart the two numeric formats put the model's probabilities.
"""

from __future__ import annotations

import argparse

import torch

from ibpo_lightning.models.loading import load_policy
from ibpo_lightning.rollout.hf_engine import HFEngine
from ibpo_lightning.rollout.sampler import encode_chat
from ibpo_lightning.tasks import ChainTask


@torch.no_grad()
def next_token_probs(policy, ids: list[int], bf16: bool) -> torch.Tensor:
    """The trainer's next-token probabilities after ``ids``, in fp32 or under bf16 autocast."""
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        return policy(torch.tensor([ids])).logits[0, -1].float().softmax(-1)


def positions(policy, tok, task: ChainTask, count: int, max_prob: float, bf16: bool):
    """Prompt ids ending at ``a op b =`` and the trainer's next-token probabilities there."""
    found = []
    for q in task.heldout_problems():
        base = encode_chat(tok, q.prompt, task.system_prompt)
        lines = q.solution.split("\n")[:-1]
        for k, line in enumerate(lines):
            ids = base + tok.encode("\n".join(lines[:k] + [line.split("=")[0] + "="]), add_special_tokens=False)
            p = next_token_probs(policy, ids, bf16)
            if p.max() < max_prob:
                found.append((ids, p))
        if len(found) >= count:
            return found[:count]
    return found


def distance_probs(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Mean total-variation distance between paired distributions."""
    return sum(0.5 * (x - y).abs().sum().item() for x, y in zip(a, b)) / len(a)


def distance(draws: list[list[int]], probs: list[torch.Tensor]) -> float:
    """Mean total-variation distance between drawn frequencies and probabilities."""
    freqs = [torch.bincount(torch.tensor(d), minlength=p.numel()).float() / len(d) for d, p in zip(draws, probs)]
    return distance_probs(freqs, probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    ap.add_argument("--engines", nargs="+", choices=["hf", "vllm"], default=["hf", "vllm"])
    ap.add_argument("--positions", type=int, default=24)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--max-prob", type=float, default=0.9)
    args = ap.parse_args()
    bf16 = args.precision == "bf16-mixed"
    policy, tok = load_policy(args.model)
    task = ChainTask(num_steps=[2, 3], max_value=20, num_train=0, num_heldout=300)
    found = positions(policy, tok, task, args.positions, args.max_prob, bf16)
    prompts, probs = [ids for ids, _ in found], [p for _, p in found]
    print(f"{len(prompts)} positions, {args.precision}; the trainer's top probability there: "
          f"{torch.stack([p.max() for p in probs]).mean():.3f} on average")
    gen = torch.Generator().manual_seed(0)
    noise = distance([torch.multinomial(p, args.samples, True, generator=gen).tolist() for p in probs], probs)
    print(f"exact multinomial draws (noise):  TV {noise:.3f}")
    for name in args.engines:
        if name == "hf":
            engine = HFEngine()
            engine.bind(policy, tok, torch.bfloat16 if bf16 else None)
            groups = [engine.generate([p], args.samples, max_new_tokens=1, temperature=1.0, seed=0)[0]
                      for p in prompts]  # one position at a time: n copies of a vocabulary-wide row
        else:
            from ibpo_lightning.rollout.vllm_engine import VLLMEngine

            engine = VLLMEngine(dtype="bfloat16" if bf16 else "float32")
            engine.bind(policy, tok)
            groups = engine.generate(prompts, args.samples, max_new_tokens=1, temperature=1.0, seed=0)
        print(f"{name:>4} engine:                     TV {distance([[s.token_ids[0] for s in g] for g in groups], probs):.3f}",
              flush=True)
    # how far apart the two numeric formats put the trainer's own probabilities at these positions
    other = [next_token_probs(policy, ids, not bf16) for ids in prompts]
    print(f"the trainer in the other format at the same positions: TV {distance_probs(probs, other):.3f}")


if __name__ == "__main__":
    main()
