#!/usr/bin/env bash
# Set up .venv with the project and its test tools. Safe to rerun: it only installs what is missing.
#   torch is installed first and pinned, so pip never swaps in a multi-GB build you did not ask for:
#   on a machine without CUDA this picks the CPU wheel; on a CUDA machine PyPI's default CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import torch, transformers, accelerate, datasets, gradio; print(f'ready: torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, datasets {datasets.__version__}, gradio {gradio.__version__}, cuda={torch.cuda.is_available()}')"
