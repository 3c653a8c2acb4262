#!/usr/bin/env bash
# ibpo-lightning vs TRL's GRPOTrainer at equal settings, alternating runs on one machine.
#   bash scripts/bench_vs_trl.sh [rounds] [steps]      (defaults: 2 rounds of 5 steps, 1 warm-up)
# Needs .venv (scripts/install.sh) and .venv-trl (scripts/install_trl.sh). Each round runs, one
# after the other: ibpo-lightning with vLLM, ibpo-lightning with the HF engine, TRL with HF
# generate. Results: runs/bench_trl/<engine>_r<k>/summary.json and the machine in machine.json; the
# table: scripts/bench_trl_report.py runs/bench_trl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
STEPS=${2:-5}
OUT=runs/bench_trl
CONFIGS=(-c configs/quickstart.yaml -c configs/estimators/grpo.yaml)
# TRL trains in the precision ours resolves to (the quickstart's trainer.precision, auto by default)
PRECISION=$(.venv/bin/python -c "
from omegaconf import OmegaConf; from ibpo_lightning.precision import resolve_precision
print(resolve_precision(OmegaConf.load('configs/quickstart.yaml').trainer.get('precision', 'auto'))[0])")
TRL_PRECISION=(); [[ $PRECISION == bf16* ]] && TRL_PRECISION=(--bf16)
echo "precision: $PRECISION (TRL: ${TRL_PRECISION[*]:-fp32})"
mkdir -p $OUT
.venv/bin/python -c "import sys; from ibpo_lightning.diagnostics import bench_record
bench_record.save('$OUT/machine.json', {'rounds': $ROUNDS, 'steps': $STEPS, 'precision': '$PRECISION'},
                  ['scripts/bench_vs_trl.sh', '$ROUNDS', '$STEPS'])"
.venv/bin/python scripts/bench_step.py "${CONFIGS[@]}" --steps "$STEPS" --export-prompts $OUT/prompts.jsonl
for r in $(seq 1 "$ROUNDS"); do
  .venv/bin/python scripts/bench_step.py "${CONFIGS[@]}" --steps "$STEPS" --out $OUT/ours_vllm_r$r
  .venv/bin/python scripts/bench_step.py "${CONFIGS[@]}" --steps "$STEPS" --out $OUT/ours_hf_r$r \
    -- --rollout.engine ibpo_lightning.rollout.HFEngine
  .venv-trl/bin/python scripts/bench_trl.py --prompts $OUT/prompts.jsonl --steps "$STEPS" --engine hf \
    --prompts-per-step 8 --group-size 8 --max-new-tokens 16 --lr 2e-5 --out $OUT/trl_hf_r$r "${TRL_PRECISION[@]}"
done
