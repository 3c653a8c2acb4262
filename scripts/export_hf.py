"""Export a training checkpoint's policy in Hugging Face format (safetensors + config + tokenizer).

Usage:  python scripts/export_hf.py runs/gsm8k/csv/version_0/checkpoints/last.ckpt runs/gsm8k/export [--dtype bfloat16]

The output directory loads with ``AutoModelForCausalLM.from_pretrained(OUT)`` and ``vllm.LLM(OUT)``,
and is accepted wherever a model is named (``--model.model OUT``, ``scripts/evaluate.py --model OUT``).
"""

from __future__ import annotations

import argparse

from ibpo_lightning.export import DTYPES, policy_from_checkpoint, save_hf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt written by `ibpo fit` or `ibpo sft`, or an FSDP2 run's "
                                           "checkpoint directory of shards")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast the saved weights (default: as trained, float32)")
    args = parser.parse_args(argv)
    policy, tokenizer = policy_from_checkpoint(args.checkpoint)
    print(save_hf(policy, tokenizer, args.out, args.dtype))


if __name__ == "__main__":
    main()
