#!/usr/bin/env bash
# A separate environment with TRL, for scripts/bench_trl.py only (TRL is never a dependency of
# ibpo-lightning). Same torch and transformers as .venv, so the two benchmarks differ only in
# the trainer. Idempotent, like scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_TRL:-.venv-trl}
STAMP="$VENV/.installed"
[[ -f "$STAMP" ]] && exit 0
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q trl==1.16.0 transformers==5.19.0 accelerate==1.15.0 datasets==5.2.0
touch "$STAMP"
echo "installed into $VENV"
