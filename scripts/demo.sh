#!/usr/bin/env bash
# The main job on the built-in data: set up, train stage 1 (VQ-VAE) and stage 2 (transformer),
# assemble the text-to-image pipeline, sample held-out captions and score them with the checker.
# Rerunning resumes each stage from its latest checkpoint (a finished stage is only re-exported).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false
# Without a GPU, `accelerate launch` runs the script with one CPU thread unless told otherwise.
THREADS="--num_cpu_threads_per_process $(nproc)"

echo "== stage 1: VQ-VAE image tokenizer (configs/stage1_tiny.yaml)"
accelerate launch -q $THREADS stage1_vqvae/train.py --config configs/stage1_tiny.yaml --resume_from_checkpoint latest
python -m stage1_vqvae.evaluate --model outputs/stage1_tiny/vqvae --config configs/stage1_tiny.yaml

echo "== stage 2: transformer prior p(codes | caption) (configs/stage2_tiny.yaml)"
accelerate launch -q $THREADS stage2_transformer/train.py --config configs/stage2_tiny.yaml --resume_from_checkpoint latest

echo "== pipeline: assemble, then sample held-out captions"
python -m pipeline.assemble --stage1 outputs/stage1_tiny --stage2 outputs/stage2_tiny --out outputs/pipeline_tiny
python scripts/demo_heldout.py --model outputs/pipeline_tiny --out outputs/heldout

echo "== done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
echo "open the UI on the trained model:  .venv/bin/python app_gradio.py --model outputs/pipeline_tiny"
